/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The kernel HTTP datapath's counters (wk_http_stats) and audit events
 * (wk_http_events): see "Events" in http-inject.bpf.c, which fills them in
 * (http_event(), connect_event()). Needs bpf_helpers.h.
 */
#ifndef WIREKEY_HTTP_EVENTS_BPF_H
#define WIREKEY_HTTP_EVENTS_BPF_H

#include "wirekey.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WK_HTTP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} wk_http_stats SEC(".maps");

/*
 * Requests injected per (binding, header version, epoch), per CPU: the
 * exact "how often" of the audit log, whatever the events' grain and
 * however many of them the ring lost. See count_usage().
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, WK_HTTP_MAX_USAGE);
	__type(key, struct wk_http_usage_key);
	__type(value, struct wk_http_usage);
} wk_http_usage SEC(".maps");

/* Audit events (struct wk_http_event); see "Events" in http-inject.bpf.c. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WK_HTTP_EVENTS_SIZE);
} wk_http_events SEC(".maps");

static __always_inline void http_count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&wk_http_stats, &stat);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/*
 * One injected request in wk_http_usage. This CPU's copy of the entry is
 * only ever written by programs on this CPU, and sk_msg runs in process
 * context with migration disabled, so plain increments do. An entry the
 * map has no room for is counted (WK_HTTP_STAT_USAGE_FULL), never waited
 * for: the request is injected all the same.
 */
static __always_inline void count_usage(struct wk_http_usage_key *k, __u64 now)
{
	struct wk_http_usage *u, first = { .requests = 1, .first_ns = now, .last_ns = now };

	u = bpf_map_lookup_elem(&wk_http_usage, k);
	if (!u) {
		if (!bpf_map_update_elem(&wk_http_usage, k, &first, BPF_NOEXIST))
			return;
		/* Another CPU made the entry meanwhile, or the map is full. */
		u = bpf_map_lookup_elem(&wk_http_usage, k);
		if (!u) {
			http_count(WK_HTTP_STAT_USAGE_FULL);
			return;
		}
	}
	/* Another CPU's entry starts at zero on this one. */
	if (!u->requests)
		u->first_ns = now;
	u->requests++;
	u->last_ns = now;
}

/*
 * An event, or nothing when the ring is full (counted): it never changes
 * what the caller decides. Injections leave the reader asleep until
 * enough is waiting; refusals wake it now.
 */
static __always_inline struct wk_http_event *event_reserve(__u32 kind, __u32 reason)
{
	struct wk_http_event *e;

	e = bpf_ringbuf_reserve(&wk_http_events, sizeof(*e), 0);
	if (!e) {
		http_count(WK_HTTP_STAT_EVENTS_LOST);
		return NULL;
	}
	e->time_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->reason = reason;
	return e;
}

/*
 * 1 + the reader's position when an injection last woke it. The reader,
 * once woken, keeps reading as long as anything is waiting (its epoll is
 * level-triggered), so a busy ring needs one wake-up per read, not one per
 * event past the mark. Racy on purpose: a race costs a wake-up more.
 */
static __u64 woken_at;

static __always_inline void event_submit(struct wk_http_event *e, __u32 kind)
{
	__u64 flags = BPF_RB_NO_WAKEUP, cons;

	if (kind != WK_HTTP_EVENT_INJECTED) {
		flags = BPF_RB_FORCE_WAKEUP;
	} else if (bpf_ringbuf_query(&wk_http_events, BPF_RB_AVAIL_DATA) >= WK_HTTP_EVENTS_WAKE) {
		cons = bpf_ringbuf_query(&wk_http_events, BPF_RB_CONS_POS) + 1;
		if (cons != woken_at) {
			woken_at = cons;
			flags = BPF_RB_FORCE_WAKEUP;
		}
	}
	bpf_ringbuf_submit(e, flags);
}

#endif /* WIREKEY_HTTP_EVENTS_BPF_H */
