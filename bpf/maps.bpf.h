/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Maps shared by more than one *.bpf.c file. Each file includes this
 * header; the definitions are weak so that `bpftool gen object` links them
 * into one map per name.
 */
#ifndef WIREKEY_MAPS_BPF_H
#define WIREKEY_MAPS_BPF_H

#include "wirekey.h"

/* tgid -> the executable the process runs (kept by identity.bpf.c). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WK_MAX_TASKS);
	__type(key, __u32);
	__type(value, struct wk_exe_key);
} wk_task_exe SEC(".maps") __weak;

/* Counters the controller polls to report what the kernel had to drop. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WK_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} wk_stats SEC(".maps") __weak;

static __always_inline void wk_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&wk_stats, &stat);

	if (v)
		__sync_fetch_and_add(v, 1);
}

#endif /* WIREKEY_MAPS_BPF_H */
