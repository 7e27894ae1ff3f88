// SPDX-License-Identifier: GPL-2.0-only
/*
 * Egress: a restricted workload reaches only what its policy allows.
 *
 * A workload with an egress section in the policy is restricted: its
 * wk_egress_policy entry names a rule set (and whether it is enforced or
 * audited). Every TCP or UDP destination it names to connect() (connect4/6
 * in redirect.bpf.c, judged before any redirect rewrites the destination)
 * or to an unconnected sendmsg()/sendto() (sendmsg4/6 here) is looked up
 * in wk_egress_rules, an LPM trie keyed by (set, protocol, address prefix)
 * whose value lists the allowed port ranges. Allowed: the call goes
 * on untouched. Not allowed: it fails with EPERM before any packet is sent,
 * or in audit mode goes on; either way one wk_egress_events record and a
 * per-workload count (egress.bpf.h).
 *
 * Rules name TCP and UDP only, and only those sockets have every
 * destination pass a hook: raw sockets, ICMP "ping" sockets and other
 * protocols (SCTP, UDP-Lite) can send where no connect() or sendmsg() hook
 * looks. So a restricted workload may not create them: socket() of any
 * other IPv4 or IPv6 kind fails with EPERM (sock_create here, hook
 * `socket`), or in audit mode goes on, with the same event and count.
 *
 * What is not judged here:
 *  - A TCP connect() to a port that wk_bind_port sends to the proxy for the
 *    caller's workload: the proxy judges it by SNI or Host (name rules).
 *  - The agent's own process, and processes in any network namespace but
 *    the host's (as for the redirect).
 *  - Datagrams on a connected UDP socket: connect() was judged.
 *  - Sockets of families other than IPv4 and IPv6 (AF_PACKET, which needs
 *    CAP_NET_RAW): the kernel runs sock_create for inet sockets only.
 *  - Sockets a process made before its workload was restricted.
 * IPv4 and IPv6 are one address space, IPv4 as ::ffff:a.b.c.d (as the
 * policy's matcher has it, controller/policy/egress.ts): an IPv4-mapped
 * destination on an IPv6 socket is the IPv4 address, and an IPv6 prefix
 * that contains ::ffff:0:0/96 (::/0) allows IPv4 too.
 *
 * Longest-prefix match decides alone: the controller gives each prefix the
 * ports of every rule prefix that contains it. A reload writes the new set
 * under a new id, flips the workload's entry in one update, then deletes
 * the old set, so a call is judged by one whole set, never a mix.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "workload.bpf.h"
#include "egress.bpf.h"

#define SYS_PROCEED	1
#define SYS_REJECT	0

/*
 * Puts the egress enums and the event record into the object's BTF, where
 * the controller checks its copies of them (verifyContract). Never read.
 */
const struct wk_egress_event *const wk_egress_event_btf = 0;
const enum wk_egress_limits *const wk_egress_limits_btf = 0;
const enum wk_egress_flag *const wk_egress_flag_btf = 0;
const enum wk_egress_proto *const wk_egress_proto_btf = 0;
const enum wk_egress_verdict *const wk_egress_verdict_btf = 0;
const enum wk_egress_hook *const wk_egress_hook_btf = 0;
const enum wk_egress_stat *const wk_egress_stat_btf = 0;

/*
 * The workload whose calls are judged: the caller's, unless the caller is
 * the agent or the socket (`netns`: its namespace's cookie) is in another
 * network namespace than the host's. 0: not judged.
 */
static __always_inline __u32 judged_workload(__u64 netns)
{
	if (is_agent() || netns != host_netns_cookie)
		return 0;
	return current_workload();
}

static __always_inline int sendmsg_judge(struct bpf_sock_addr *ctx, const __u32 *addr)
{
	__u32 wid;

	if (!egress_active())
		return SYS_PROCEED;
	wid = judged_workload(bpf_get_netns_cookie(ctx));
	if (!wid)
		return SYS_PROCEED;
	return egress_allows(ctx, wid, addr, bpf_ntohs((__u16)ctx->user_port), WK_EGRESS_HOOK_SENDMSG) ?
		SYS_PROCEED : SYS_REJECT;
}

/*
 * socket(): runs once the kernel has set the socket up (its protocol is
 * resolved, IPPROTO_IP is TCP or UDP by then), for IPv4 and IPv6 sockets.
 * A kind rules can name goes on before anything is looked up.
 */
SEC("cgroup/sock_create")
int wk_sock_create(struct bpf_sock *sk)
{
	__u32 wid;

	if (!egress_active() || egress_protocol(sk->type, sk->protocol))
		return SYS_PROCEED;
	wid = judged_workload(bpf_get_netns_cookie(sk));
	if (!wid)
		return SYS_PROCEED;
	return egress_socket_allows(wid, sk->family, sk->type, sk->protocol) ? SYS_PROCEED : SYS_REJECT;
}

SEC("cgroup/sendmsg4")
int wk_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];

	addr[0] = 0;
	addr[1] = 0;
	addr[2] = bpf_htonl(0xffff);
	addr[3] = ctx->user_ip4;
	return sendmsg_judge(ctx, addr);
}

SEC("cgroup/sendmsg6")
int wk_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];

	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	return sendmsg_judge(ctx, addr);
}

char LICENSE[] SEC("license") __weak = "GPL";
