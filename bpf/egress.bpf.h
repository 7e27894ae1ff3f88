/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Egress policy: whether a restricted workload may reach a destination
 * (egress_allows()), for the connect() hooks of redirect.bpf.c and the
 * sendmsg() hooks of egress.bpf.c, and whether one of its sockets may route
 * its packets by hops of its own (egress_route_allows()). See egress.bpf.c for what is judged
 * where. The maps are weak so that `bpftool gen object` links them into one
 * map per name; the controller fills them (Datapath.setEgress).
 * Needs bpf_helpers.h, bpf_endian.h and workload.bpf.h.
 */
#ifndef WIREKEY_EGRESS_BPF_H
#define WIREKEY_EGRESS_BPF_H

#include "wirekey.h"

#define WK_SOCK_STREAM		1
#define WK_SOCK_DGRAM		2
#define WK_IPPROTO_MPTCP	262

/*
 * workload id -> its egress policy (absent: unrestricted). Key 0 is there,
 * restricted, while any workload is: without it, connect()s to ports no
 * binding names and every sendmsg() skip the workload lookup. Not
 * preallocated: a replaced value is freed only after every program that
 * may be reading it has finished, so a reader never sees half a flip.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, WK_MAX_WORKLOADS + 1);
	__type(key, __u32);
	__type(value, struct wk_egress_policy);
} wk_egress_policy SEC(".maps") __weak;

/* (set, protocol, address prefix) -> the ports allowed there. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, WK_EGRESS_MAP_ENTRIES);
	__type(key, struct wk_egress_key);
	__type(value, struct wk_egress_val);
} wk_egress_rules SEC(".maps") __weak;

/* Per workload: WK_EGRESS_STAT_MAX counters (enum wk_egress_stat). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, (WK_MAX_WORKLOADS + 1) * WK_EGRESS_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} wk_egress_stats SEC(".maps") __weak;

/*
 * A TCP or UDP socket made by a process of a restricted workload, as
 * socket() saw it: who made it, for the programs that judge what is done
 * with it later without a caller to ask (setsockopt(), and its packets).
 * Kernel-only: the controller never reads it.
 */
struct wk_egress_sock {
	__u64 cgroup_id;
	__u32 workload_id;
	__u32 pid;
	__u32 uid;
	__u32 flags;		/* EGRESS_SOCK_* */
};

/* wk_egress_sock.flags: a route event was written for this socket (one per socket, not per packet). */
#define EGRESS_SOCK_REPORTED	1

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct wk_egress_sock);
} wk_egress_sock SEC(".maps") __weak;

/* Refused and would-refuse calls (struct wk_egress_event). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WK_EGRESS_EVENTS_SIZE);
} wk_egress_events SEC(".maps") __weak;

static __always_inline void egress_count(__u32 wid, __u32 stat)
{
	__u32 idx = wid * WK_EGRESS_STAT_MAX + stat;
	__u64 *v = bpf_map_lookup_elem(&wk_egress_stats, &idx);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* Whether some workload is restricted: the caller's must then be looked up. */
static __always_inline bool egress_active(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&wk_egress_policy, &zero) != NULL;
}

/* A socket's protocol as rules name it: TCP (MPTCP too), UDP, or 0 for anything else. */
static __always_inline __u8 egress_protocol(__u32 type, __u32 proto)
{
	if (type == WK_SOCK_STREAM && (proto == WK_EGRESS_TCP || proto == WK_IPPROTO_MPTCP))
		return WK_EGRESS_TCP;
	if (type == WK_SOCK_DGRAM && proto == WK_EGRESS_UDP)
		return WK_EGRESS_UDP;
	return 0;
}

/* Whether `port` is in one of the entry's ranges. */
static __always_inline bool egress_port_in(const struct wk_egress_val *val, __u16 port)
{
	__u32 count = val->count;

	for (int i = 0; i < WK_EGRESS_MAX_RANGES; i++) {
		if (i >= count)
			break;
		if (port >= val->ranges[i].lo && port <= val->ranges[i].hi)
			return true;
	}
	return false;
}

/* A call being judged, as its event records it. */
struct egress_call {
	const __u32 *addr;	/* destination (kernel form), or NULL for socket() */
	__u16 port;		/* destination port, host byte order; 0 for socket() */
	__u8 protocol;		/* IPPROTO_* of the socket */
	__u8 sock_type;
	__u8 family;
	__u8 hook;		/* WK_EGRESS_HOOK_* */
};

/* An event record of `call`, but who made it (the caller's identity): NULL when the ring is full (counted). */
static __always_inline struct wk_egress_event *egress_event_start(__u32 wid, __u32 set_id, const struct egress_call *call,
								  __u8 verdict)
{
	struct wk_egress_event *e;

	e = bpf_ringbuf_reserve(&wk_egress_events, sizeof(*e), 0);
	if (!e) {
		egress_count(wid, WK_EGRESS_STAT_EVENTS_LOST);
		return NULL;
	}
	e->time_ns = bpf_ktime_get_ns();
	if (call->addr) {
		e->addr[0] = call->addr[0];
		e->addr[1] = call->addr[1];
		e->addr[2] = call->addr[2];
		e->addr[3] = call->addr[3];
	} else {
		e->addr[0] = 0;
		e->addr[1] = 0;
		e->addr[2] = 0;
		e->addr[3] = 0;
	}
	e->port = call->port;
	e->protocol = call->protocol;
	e->verdict = verdict;
	e->hook = call->hook;
	e->sock_type = call->sock_type;
	e->family = call->family;
	e->_pad = 0;
	e->workload_id = wid;
	e->set_id = set_id;
	return e;
}

/* The event of a call, made by the current task. */
static __always_inline void egress_event(__u32 wid, __u32 set_id, const struct egress_call *call, __u8 verdict)
{
	struct wk_egress_event *e = egress_event_start(wid, set_id, call, verdict);

	if (!e)
		return;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->uid = (__u32)bpf_get_current_uid_gid();
	bpf_ringbuf_submit(e, 0);
}

/*
 * A call of restricted workload `wid` that no rule allows: refused (an
 * event and a count), or in audit mode let through (an event and a count
 * too). Returns whether it may go on.
 */
static __always_inline bool egress_unallowed(__u32 wid, __u32 flags, __u32 set_id, const struct egress_call *call)
{
	if (flags & WK_EGRESS_AUDIT) {
		egress_count(wid, WK_EGRESS_STAT_WOULD_REFUSE);
		egress_event(wid, set_id, call, WK_EGRESS_WOULD_REFUSE);
		return true;
	}
	egress_count(wid, WK_EGRESS_STAT_REFUSED);
	egress_event(wid, set_id, call, WK_EGRESS_REFUSED);
	return false;
}

/*
 * Whether workload `wid` may send to addr:port (addr in the kernel's form,
 * IPv4 as ::ffff:a.b.c.d; port in host byte order). An unrestricted
 * workload may. A restricted one may when the longest prefix of its rule
 * set that holds the address, for the socket's protocol, lists the port;
 * when none does, egress_unallowed() decides.
 */
static __always_inline bool egress_allows(struct bpf_sock_addr *ctx, __u32 wid, const __u32 *addr,
					  __u16 port, __u8 hook)
{
	struct wk_egress_key key = {};
	struct wk_egress_policy *pol;
	struct wk_egress_val *val;
	struct egress_call call;
	__u32 flags, set_id;

	pol = bpf_map_lookup_elem(&wk_egress_policy, &wid);
	if (!pol)
		return true;
	flags = pol->flags;
	set_id = pol->set_id;
	if (!(flags & WK_EGRESS_RESTRICTED))
		return true;

	key.protocol = egress_protocol(ctx->type, ctx->protocol);
	if (key.protocol) {
		key.prefixlen = WK_EGRESS_KEY_FIXED + 128;
		key.set_id = set_id;
		key.addr[0] = addr[0];
		key.addr[1] = addr[1];
		key.addr[2] = addr[2];
		key.addr[3] = addr[3];
		val = bpf_map_lookup_elem(&wk_egress_rules, &key);
		if (val && egress_port_in(val, port))
			return true;
	}

	call.addr = addr;
	call.port = port;
	call.protocol = (__u8)ctx->protocol;
	call.sock_type = (__u8)ctx->type;
	call.family = (__u8)ctx->family;
	call.hook = hook;
	return egress_unallowed(wid, flags, set_id, &call);
}

/*
 * Whether workload `wid` may have a socket of this family, type and
 * protocol, one that rules cannot name (egress_protocol() is 0: raw, ICMP
 * "ping", SCTP, UDP-Lite), which could reach addresses no connect() or
 * sendmsg() hook sees. Unrestricted workloads may; for a restricted one
 * egress_unallowed() decides, at socket().
 */
static __always_inline bool egress_socket_allows(__u32 wid, __u32 family, __u32 type, __u32 protocol)
{
	struct wk_egress_policy *pol;
	struct egress_call call;

	pol = bpf_map_lookup_elem(&wk_egress_policy, &wid);
	if (!pol || !(pol->flags & WK_EGRESS_RESTRICTED))
		return true;
	call.addr = NULL;
	call.port = 0;
	call.protocol = (__u8)protocol;
	call.sock_type = (__u8)type;
	call.family = (__u8)family;
	call.hook = WK_EGRESS_HOOK_SOCKET;
	return egress_unallowed(wid, pol->flags, pol->set_id, &call);
}

/*
 * Whether the socket that `mark` describes may carry IPv4 options or an
 * IPv6 routing header (`call`: what was asked or seen), which route its
 * packets through hops of their own choosing: never, for a restricted
 * workload; audit mode lets it through. Judged by the policy in force for
 * the workload that made the socket. Counted every time; the event is
 * written once per socket (`report`: false for a packet already reported).
 */
static __always_inline bool egress_route_allows(struct wk_egress_sock *mark, struct egress_call *call, bool report)
{
	struct wk_egress_policy *pol;
	struct wk_egress_event *e;
	__u32 wid = mark->workload_id;
	bool audit;

	pol = bpf_map_lookup_elem(&wk_egress_policy, &wid);
	if (!pol || !(pol->flags & WK_EGRESS_RESTRICTED))
		return true;
	audit = pol->flags & WK_EGRESS_AUDIT;
	egress_count(wid, audit ? WK_EGRESS_STAT_WOULD_REFUSE : WK_EGRESS_STAT_REFUSED);
	if (report) {
		e = egress_event_start(wid, pol->set_id, call, audit ? WK_EGRESS_WOULD_REFUSE : WK_EGRESS_REFUSED);
		if (e) {
			e->cgroup_id = mark->cgroup_id;
			e->pid = mark->pid;
			e->uid = mark->uid;
			bpf_ringbuf_submit(e, 0);
		}
	}
	return audit;
}

#endif /* WIREKEY_EGRESS_BPF_H */
