// SPDX-License-Identifier: GPL-2.0-only
/*
 * Identity: keep tgid -> executable current for every process on the host.
 *
 * exec records the file the process now runs; fork gives a new process its
 * parent's entry (a new thread shares its process's entry); the exit of a
 * process's last thread removes the entry, so a reused pid never inherits
 * it. Processes that predate the agent are backfilled from /proc by the
 * wk_backfill (identity-iter.bpf.c), without overwriting what these
 * programs wrote.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "maps.bpf.h"
#include "identity.bpf.h"

#define BPF_ANY		0

SEC("tp_btf/sched_process_exec")
int BPF_PROG(wk_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct wk_exe_key key = {};
	__u32 tgid = p->tgid;

	/*
	 * bprm->file is the file as opened through the path: on an overlay,
	 * the overlay's inode, the one the agent's open() of the selector's
	 * path gets too (the layer's real file is only behind its mappings).
	 */
	wk_exe_key_of(bprm->file, &key);
	if (bpf_map_update_elem(&wk_task_exe, &tgid, &key, BPF_ANY))
		wk_count(WK_STAT_TASKS_FULL);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(wk_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid;
	__u32 ctgid = child->tgid;
	struct wk_exe_key *key;

	if (ctgid == ptgid)
		return 0;
	key = bpf_map_lookup_elem(&wk_task_exe, &ptgid);
	if (key && bpf_map_update_elem(&wk_task_exe, &ctgid, key, BPF_ANY))
		wk_count(WK_STAT_TASKS_FULL);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(wk_exit, struct task_struct *p)
{
	__u32 tgid = p->tgid;

	/* signal->live counts the threads still running; 0: the process is gone. */
	if (p->signal->live.counter)
		return 0;
	bpf_map_delete_elem(&wk_task_exe, &tgid);
	return 0;
}

char LICENSE[] SEC("license") __weak = "GPL";
