// SPDX-License-Identifier: GPL-2.0-only
/*
 * Redirect: send bound workloads' connections to the local proxy.
 *
 * cgroup/connect4 and connect6 decide, per connect(), whether the caller is a
 * bound workload going to a bound port; if so the original destination and
 * the caller's identity are stored against the socket and the destination is
 * rewritten to the proxy. getpeername4/6 put the original destination back so
 * the redirect is invisible. sockops copies the stored entry into wk_conn,
 * keyed by the socket's local address, which is what the proxy sees as the
 * peer of the connection it accepts.
 *
 * A restricted workload's connect() is judged against its egress policy
 * here too, before any rewrite (egress.bpf.h; egress.bpf.c says how).
 *
 * cgroup/bind4 and bind6 keep the proxy port for the agent: the connect()
 * programs are pinned and go on sending connections there while no agent
 * runs, so a process that took the port would be handed them.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "workload.bpf.h"
#include "sockops.bpf.h"
#include "egress.bpf.h"

#define SOCK_STREAM	1
#define IPPROTO_TCP	6

#define SYS_PROCEED	1
#define SYS_REJECT	0

/* Set by the controller between open and load. */
const volatile __u32 agent_tgid = 0;
const volatile __u64 agent_start_ticks = 0;
const volatile __u64 host_netns_cookie = 0;
const volatile __u16 proxy_port = 0;	/* host byte order */

/*
 * Puts the enums of wirekey.h that these programs use into the object's
 * BTF, where the controller checks its copies of them (verifyConstants).
 * Never read.
 */
const enum wk_limits *const wk_limits_btf = 0;
const enum wk_action *const wk_action_btf = 0;
const enum wk_stat *const wk_stat_btf = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WK_MAX_BINDINGS);
	__type(key, struct wk_bind_key);
	__type(value, struct wk_bind_val);
} wk_bind_port SEC(".maps");

/* Destination ports (host byte order) that some binding names: connect()s
 * to any other port skip the workload lookup entirely. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WK_MAX_BINDINGS);
	__type(key, __u16);
	__type(value, __u32);
} wk_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct wk_orig_dst);
} wk_sock_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WK_MAX_CONNS);
	__type(key, struct wk_conn_key);
	__type(value, struct wk_orig_dst);
} wk_conn SEC(".maps");

/*
 * Common part of connect4/6: returns the socket storage to fill when this
 * connect() must go to the proxy, NULL when it is none of our business or
 * must be refused. *wid_out is set when it goes to the proxy (so a NULL
 * return then means no storage); *refuse when the workload's egress policy
 * refuses the destination. The egress check comes first for every
 * destination the proxy would not judge, and sees it before any rewrite.
 */
static __always_inline struct wk_orig_dst *
redirect_target(struct bpf_sock_addr *ctx, __u16 port_be, const __u32 *addr,
		__u32 *wid_out, bool *refuse)
{
	struct wk_bind_key key = {};
	struct wk_bind_val *bind;
	bool tcp, bound;
	__u32 wid;

	/* The agent's own upstream connections must reach the real server. */
	if (is_agent())
		return NULL;
	/* Containers' network namespaces cannot reach the host's proxy. */
	if (bpf_get_netns_cookie(ctx) != host_netns_cookie)
		return NULL;

	tcp = ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
	key.port = bpf_ntohs(port_be);
	bound = tcp && bpf_map_lookup_elem(&wk_ports, &key.port);
	if (!bound && !egress_active())
		return NULL;
	wid = current_workload();
	if (!wid)
		return NULL;
	if (bound) {
		key.workload_id = wid;
		bind = bpf_map_lookup_elem(&wk_bind_port, &key);
		if (bind && bind->action == WK_ACTION_PROXY) {
			*wid_out = wid;
			return bpf_sk_storage_get(&wk_sock_orig, ctx->sk, NULL,
						  BPF_SK_STORAGE_GET_F_CREATE);
		}
	}
	*refuse = !egress_allows(ctx, wid, addr, key.port, WK_EGRESS_HOOK_CONNECT);
	return NULL;
}

static __always_inline void fill_identity(struct wk_orig_dst *orig, __u32 wid,
					  __u16 port_be, __u16 family)
{
	orig->port = port_be;
	orig->family = family;
	orig->workload_id = wid;
	orig->pid = bpf_get_current_pid_tgid() >> 32;
	orig->uid = (__u32)bpf_get_current_uid_gid();
	orig->cgroup_id = bpf_get_current_cgroup_id();
}

SEC("cgroup/connect4")
int wk_connect4(struct bpf_sock_addr *ctx)
{
	__u16 port_be = (__u16)ctx->user_port;
	struct wk_orig_dst *orig;
	bool refuse = false;
	__u32 wid = 0;
	__u32 addr[4];

	addr[0] = 0;
	addr[1] = 0;
	addr[2] = bpf_htonl(0xffff);
	addr[3] = ctx->user_ip4;
	orig = redirect_target(ctx, port_be, addr, &wid, &refuse);
	if (!orig) {
		/*
		 * A bound workload whose identity cannot be recorded must not
		 * reach the service without its credential being accounted for.
		 */
		if (wid)
			wk_count(WK_STAT_STORAGE_FAIL);
		return wid || refuse ? SYS_REJECT : SYS_PROCEED;
	}

	orig->addr[0] = addr[0];
	orig->addr[1] = addr[1];
	orig->addr[2] = addr[2];
	orig->addr[3] = addr[3];
	fill_identity(orig, wid, port_be, AF_INET);

	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(proxy_port);
	return SYS_PROCEED;
}

SEC("cgroup/connect6")
int wk_connect6(struct bpf_sock_addr *ctx)
{
	__u16 port_be = (__u16)ctx->user_port;
	struct wk_orig_dst *orig;
	bool refuse = false;
	__u32 wid = 0;
	__u32 a0, a1, a2, a3;
	__u32 addr[4];
	bool mapped;

	a0 = ctx->user_ip6[0];
	a1 = ctx->user_ip6[1];
	a2 = ctx->user_ip6[2];
	a3 = ctx->user_ip6[3];
	addr[0] = a0;
	addr[1] = a1;
	addr[2] = a2;
	addr[3] = a3;
	orig = redirect_target(ctx, port_be, addr, &wid, &refuse);
	if (!orig) {
		if (wid)
			wk_count(WK_STAT_STORAGE_FAIL);
		return wid || refuse ? SYS_REJECT : SYS_PROCEED;
	}

	orig->addr[0] = a0;
	orig->addr[1] = a1;
	orig->addr[2] = a2;
	orig->addr[3] = a3;
	fill_identity(orig, wid, port_be, AF_INET6);

	/* An IPv4-mapped destination must stay IPv4: the proxy's 127.0.0.1. */
	mapped = !a0 && !a1 && a2 == bpf_htonl(0xffff);
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = mapped ? bpf_htonl(0xffff) : 0;
	ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	ctx->user_port = bpf_htons(proxy_port);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int wk_getpeername4(struct bpf_sock_addr *ctx)
{
	struct wk_orig_dst *orig;

	orig = bpf_sk_storage_get(&wk_sock_orig, ctx->sk, NULL, 0);
	if (orig) {
		ctx->user_ip4 = orig->addr[3];
		ctx->user_port = orig->port;
	}
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int wk_getpeername6(struct bpf_sock_addr *ctx)
{
	struct wk_orig_dst *orig;

	orig = bpf_sk_storage_get(&wk_sock_orig, ctx->sk, NULL, 0);
	if (orig) {
		ctx->user_ip6[0] = orig->addr[0];
		ctx->user_ip6[1] = orig->addr[1];
		ctx->user_ip6[2] = orig->addr[2];
		ctx->user_ip6[3] = orig->addr[3];
		ctx->user_port = orig->port;
	}
	return SYS_PROCEED;
}

SEC("sockops")
int wk_sockops(struct bpf_sock_ops *skops)
{
	struct wk_conn_key key = {};
	struct wk_orig_dst *orig;
	struct bpf_sock *sk;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;

	if (!sockops_addr(skops, false, key.addr))
		return 1;
	key.port = (__u16)skops->local_port;

	orig = bpf_sk_storage_get(&wk_sock_orig, sk, NULL, 0);
	if (orig) {
		bpf_map_update_elem(&wk_conn, &key, orig, BPF_ANY);
	} else if (bpf_ntohl(skops->remote_port) == proxy_port) {
		/*
		 * A connection made straight to the proxy port must never find
		 * an entry left behind by an earlier socket on the same port.
		 */
		bpf_map_delete_elem(&wk_conn, &key);
	}
	return 1;
}

/*
 * bind(): in the host's network namespace, only uid 0 may bind the proxy
 * port (any address, TCP or UDP). The agent runs as root; any other
 * process that took the port while no agent runs would be handed the
 * connections the pinned connect() programs redirect there (their server
 * names, and restricted workloads' plaintext requests), and the next agent
 * could not listen. The check runs before the kernel's own (the port in
 * use), so such a bind() fails with EPERM whether or not an agent runs.
 */
static __always_inline int proxy_port_bind(struct bpf_sock_addr *ctx)
{
	if (bpf_ntohs((__u16)ctx->user_port) != proxy_port)
		return SYS_PROCEED;
	if (bpf_get_netns_cookie(ctx) != host_netns_cookie)
		return SYS_PROCEED;
	if ((__u32)bpf_get_current_uid_gid() == 0)
		return SYS_PROCEED;
	wk_count(WK_STAT_PORT_BIND);
	return SYS_REJECT;
}

SEC("cgroup/bind4")
int wk_bind4(struct bpf_sock_addr *ctx)
{
	return proxy_port_bind(ctx);
}

SEC("cgroup/bind6")
int wk_bind6(struct bpf_sock_addr *ctx)
{
	return proxy_port_bind(ctx);
}

char LICENSE[] SEC("license") __weak = "GPL";
