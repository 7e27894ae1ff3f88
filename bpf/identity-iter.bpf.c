// SPDX-License-Identifier: GPL-2.0-only
/*
 * Identity, read on demand by the controller through BPF iterators, so that
 * both sides of an executable selector are named the way wk_exec names them:
 *
 *   wk_backfill     records every running process's executable, from its
 *                   mm->exe_file, for processes that predate the agent;
 *   wk_agent_files  reports the regular files the agent holds open: the
 *                   files its executable selectors name.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "maps.bpf.h"
#include "identity.bpf.h"

#define BPF_NOEXIST	1
#define S_IFMT		00170000
#define S_IFREG		0100000

extern const volatile __u32 agent_tgid;

/*
 * An iterator's records have no type in any map's BTF: this puts struct
 * wk_agent_file into the object's BTF, where the controller checks its
 * layout (verifyLayouts). Never read.
 */
const struct wk_agent_file *const wk_agent_file_btf = 0;

/*
 * Every thread, not only group leaders: a leader that has exited leaves its
 * process running on without an mm of its own to read. A process exec or
 * fork already recorded keeps that entry, which is newer than this read;
 * the tgid of each entry added is written out, so the controller can count.
 */
SEC("iter/task")
int wk_backfill(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct wk_exe_key key = {};
	struct mm_struct *mm;
	struct file *exe;
	__u32 tgid;

	if (!task)
		return 0;
	mm = task->mm;
	if (!mm)
		return 0;	/* a kernel thread, or exiting */
	exe = mm->exe_file;
	if (!exe)
		return 0;
	wk_exe_key_of(exe, &key);
	tgid = task->tgid;
	if (bpf_map_update_elem(&wk_task_exe, &tgid, &key, BPF_NOEXIST) == 0)
		bpf_seq_write(ctx->meta->seq, &tgid, sizeof(tgid));
	return 0;
}

/*
 * The controller runs this with the iterator limited to its own process;
 * the check of agent_tgid keeps it to the agent's files even if it is not.
 */
SEC("iter/task_file")
int wk_agent_files(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct wk_agent_file rec = {};

	if (!task || !file || task->tgid != agent_tgid)
		return 0;
	if ((file->f_inode->i_mode & S_IFMT) != S_IFREG)
		return 0;
	rec.fd = ctx->fd;
	wk_exe_key_of(file, &rec.key);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

char LICENSE[] SEC("license") __weak = "GPL";
