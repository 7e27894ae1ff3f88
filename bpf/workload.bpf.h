/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Who is calling: the workload of the current process, from the kernel
 * alone (its cgroup now, its executable as recorded at exec, its uid).
 *
 * Shared by every connect() hook (redirect.bpf.c to the proxy,
 * http-inject.bpf.c for the kernel HTTP path), so that both judge a process
 * by exactly the same rule. The maps are weak so that `bpftool gen object`
 * links them into one map per name; the controller fills them
 * (Datapath.setIdentity).
 */
#ifndef WIREKEY_WORKLOAD_BPF_H
#define WIREKEY_WORKLOAD_BPF_H

#include "maps.bpf.h"

/* Set by the controller between open and load (defined in redirect.bpf.c). */
extern const volatile __u32 agent_tgid;
/* The agent's start, as /proc/<pid>/stat's starttime: clock ticks since boot. */
extern const volatile __u64 agent_start_ticks;
extern const volatile __u64 host_netns_cookie;

/* USER_HZ, the unit of /proc's starttime (100 on every architecture this runs on). */
#define WK_USER_HZ	100

/*
 * The calling process is the agent that loaded these programs: its pid,
 * and the start time of the process that has it. The start time matters
 * once that agent is gone while its pinned programs stay attached (a
 * crash): a process that is later given the same pid started later, so it
 * is judged like any other, never exempt. (A pid is not given out again
 * while its process lives, and the agent lives far longer than the one
 * clock tick the comparison can tell apart.)
 */
static __always_inline bool is_agent(void)
{
	struct task_struct *task;

	if ((bpf_get_current_pid_tgid() >> 32) != agent_tgid)
		return false;
	task = bpf_get_current_task_btf();
	return task && task->group_leader &&
	       task->group_leader->start_boottime / (1000000000ULL / WK_USER_HZ) == agent_start_ticks;
}

/* cgroup id -> workloads whose cgroup selector names it (or a descendant's ancestor). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WK_MAX_CGROUPS);
	__type(key, __u64);
	__type(value, struct wk_mask);
} wk_cgroup_mask SEC(".maps") __weak;

/* executable -> workloads whose executable selector names it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WK_MAX_EXES);
	__type(key, struct wk_exe_key);
	__type(value, struct wk_mask);
} wk_exe_mask SEC(".maps") __weak;

/* uid -> workloads whose user selector names it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WK_MAX_UIDS);
	__type(key, __u32);
	__type(value, struct wk_mask);
} wk_uid_mask SEC(".maps") __weak;

/* Key 0 only: the workloads without a selector of each kind. A hash map,
 * so that replacing the value is atomic for readers. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wk_any);
} wk_any SEC(".maps") __weak;

static __always_inline void mask_or(struct wk_mask *dst, const struct wk_mask *src)
{
	for (int i = 0; i < WK_MASK_WORDS; i++)
		dst->bits[i] |= src->bits[i];
}

static __always_inline void mask_and(struct wk_mask *dst, const struct wk_mask *src)
{
	for (int i = 0; i < WK_MASK_WORDS; i++)
		dst->bits[i] &= src->bits[i];
}

/* 1 + index of the lowest set bit of a non-zero word (BPF has no ctz). */
static __always_inline __u32 lowest_bit(__u64 x)
{
	__u32 n = 1;

	if (!(x & 0xffffffffULL)) { n += 32; x >>= 32; }
	if (!(x & 0xffffULL)) { n += 16; x >>= 16; }
	if (!(x & 0xffULL)) { n += 8; x >>= 8; }
	if (!(x & 0xfULL)) { n += 4; x >>= 4; }
	if (!(x & 0x3ULL)) { n += 2; x >>= 2; }
	if (!(x & 0x1ULL)) { n += 1; }
	return n;
}

/*
 * The workload of the calling process: every selector a workload gives
 * must match (cgroup, judged now, including ancestors; executable, as
 * recorded at exec; uid), and of the workloads that match, the lowest
 * number wins. 0 when none matches.
 */
static __always_inline __u32 current_workload(void)
{
	__u32 zero = 0, tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	struct wk_mask match = {}, other = {};
	struct wk_exe_key *exe;
	struct wk_mask *m;
	struct wk_any *any;

	any = bpf_map_lookup_elem(&wk_any, &zero);
	if (!any)
		return 0;

	match = any->cgroup;
	for (int level = 0; level < WK_MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (!id)
			break;
		m = bpf_map_lookup_elem(&wk_cgroup_mask, &id);
		if (m)
			mask_or(&match, m);
	}

	other = any->exe;
	exe = bpf_map_lookup_elem(&wk_task_exe, &tgid);
	if (exe) {
		m = bpf_map_lookup_elem(&wk_exe_mask, exe);
		if (m)
			mask_or(&other, m);
	}
	mask_and(&match, &other);

	other = any->uid;
	m = bpf_map_lookup_elem(&wk_uid_mask, &uid);
	if (m)
		mask_or(&other, m);
	mask_and(&match, &other);

	for (int i = 0; i < WK_MASK_WORDS; i++) {
		if (match.bits[i])
			return i * 64 + lowest_bit(match.bits[i]);
	}
	return 0;
}

#endif /* WIREKEY_WORKLOAD_BPF_H */
