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
 * A restricted workload's TCP and UDP sockets are marked at socket() with
 * who made them (wk_egress_sock). A marked socket may not route its
 * packets by hops of its own (IPv4 source routing options, an IPv6 routing
 * header): the destination judged at connect() or sendmsg() would then not
 * be where they go. setsockopt() of those options fails with EPERM, and a
 * packet that carries them anyway (a sendmsg() control message) is dropped
 * (hook `route`).
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
	struct wk_egress_policy *pol;
	struct wk_egress_sock *mark;
	__u32 wid;

	if (!egress_active())
		return SYS_PROCEED;
	wid = judged_workload(bpf_get_netns_cookie(sk));
	if (!wid)
		return SYS_PROCEED;
	if (!egress_protocol(sk->type, sk->protocol))
		return egress_socket_allows(wid, sk->family, sk->type, sk->protocol) ? SYS_PROCEED : SYS_REJECT;
	/*
	 * A TCP or UDP socket of a restricted workload is marked with who
	 * made it, for the programs below that judge how its packets are
	 * routed. One that cannot be marked is not made.
	 */
	pol = bpf_map_lookup_elem(&wk_egress_policy, &wid);
	if (!pol || !(pol->flags & WK_EGRESS_RESTRICTED))
		return SYS_PROCEED;
	mark = bpf_sk_storage_get(&wk_egress_sock, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (!mark)
		return SYS_REJECT;
	mark->cgroup_id = bpf_get_current_cgroup_id();
	mark->workload_id = wid;
	mark->pid = bpf_get_current_pid_tgid() >> 32;
	mark->uid = (__u32)bpf_get_current_uid_gid();
	mark->flags = 0;
	return SYS_PROCEED;
}

/* Socket option levels and names (uapi in.h, in6.h) that make a socket route its packets by hops of its own. */
#define WK_SOL_IP		0
#define WK_SOL_IPV6		41
#define WK_IP_OPTIONS		4
#define WK_IPV6_2292RTHDR	5
#define WK_IPV6_2292PKTOPTIONS	6
#define WK_IPV6_RTHDR		57
/* A program sees at most a page of an option's bytes. */
#define WK_SOCKOPT_SEEN		4096

/*
 * The verdict on socket `sk` (marked `mark`) routing by hops of its own:
 * `addr` is a packet's destination, NULL for setsockopt(). The first time
 * for the socket writes the event.
 */
static __always_inline int route_verdict(struct bpf_sock *sk, struct wk_egress_sock *mark, const __u32 *addr)
{
	struct egress_call call = {};
	bool report;

	call.addr = addr;
	call.protocol = (__u8)sk->protocol;
	call.sock_type = (__u8)sk->type;
	call.family = (__u8)sk->family;
	call.hook = WK_EGRESS_HOOK_ROUTE;
	report = !(mark->flags & EGRESS_SOCK_REPORTED);
	mark->flags |= EGRESS_SOCK_REPORTED;
	return egress_route_allows(mark, &call, report) ? SYS_PROCEED : SYS_REJECT;
}

/*
 * setsockopt(): IPv4 options (IP_OPTIONS: loose or strict source routing
 * among them) and an IPv6 routing header (IPV6_RTHDR, and the RFC 2292
 * forms) make the kernel send a socket's packets to hops of the caller's
 * choosing, whatever connect() or sendmsg() was judged against: refused
 * (EPERM) on a restricted workload's socket. Clearing them (no bytes) is
 * not. One event per socket, every call counted.
 */
SEC("cgroup/setsockopt")
int wk_setsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level, name = ctx->optname, len = ctx->optlen;
	struct wk_egress_sock *mark;
	struct bpf_sock *sk;

	/* Any option's bytes are the kernel's to read as the caller gave them, however many. */
	if (len > WK_SOCKOPT_SEEN)
		ctx->optlen = 0;
	if (len <= 0)
		return SYS_PROCEED;
	if (!(level == WK_SOL_IP && name == WK_IP_OPTIONS) &&
	    !(level == WK_SOL_IPV6 && (name == WK_IPV6_RTHDR || name == WK_IPV6_2292RTHDR || name == WK_IPV6_2292PKTOPTIONS)))
		return SYS_PROCEED;
	sk = ctx->sk;
	if (!sk)
		return SYS_PROCEED;
	mark = bpf_sk_storage_get(&wk_egress_sock, sk, NULL, 0);
	if (!mark)
		return SYS_PROCEED;
	return route_verdict(sk, mark, NULL);
}

#define WK_ETH_P_IP		0x0800
#define WK_ETH_P_IPV6		0x86DD
#define WK_NEXTHDR_HOP		0
#define WK_NEXTHDR_ROUTING	43
#define WK_NEXTHDR_DEST		60

/*
 * Whether a packet carries IPv4 options or an IPv6 routing header (after
 * at most two hop-by-hop or destination option headers, which are all that
 * may come before one); `addr` gets its destination (IPv4 as ::ffff:a.b.c.d).
 */
static __always_inline bool routes_by_itself(struct __sk_buff *skb, __u32 *addr)
{
	__u8 ext[2];
	__u32 off;
	__u8 next;

	if (skb->protocol == bpf_htons(WK_ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return false;
		addr[0] = 0;
		addr[1] = 0;
		addr[2] = bpf_htonl(0xffff);
		addr[3] = ip.daddr;
		return ip.ihl > 5;
	}
	if (skb->protocol == bpf_htons(WK_ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return false;
		addr[0] = ip6.daddr.in6_u.u6_addr32[0];
		addr[1] = ip6.daddr.in6_u.u6_addr32[1];
		addr[2] = ip6.daddr.in6_u.u6_addr32[2];
		addr[3] = ip6.daddr.in6_u.u6_addr32[3];
		next = ip6.nexthdr;
		off = sizeof(ip6);
		for (int i = 0; i < 3; i++) {
			if (next == WK_NEXTHDR_ROUTING)
				return true;
			if (next != WK_NEXTHDR_HOP && next != WK_NEXTHDR_DEST)
				return false;
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
				return false;
			next = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
		}
	}
	return false;
}

/*
 * Every packet a restricted workload's TCP or UDP socket sends: one with
 * IPv4 options or an IPv6 routing header is dropped (the send fails with
 * EPERM), however they were set: setsockopt() before the workload was
 * restricted, or a control message of sendmsg() (IP_RETOPTS, IPV6_RTHDR),
 * which no other hook sees. Audit mode lets it go. One event per socket
 * (with setsockopt()'s), every packet counted.
 */
SEC("cgroup_skb/egress")
int wk_egress_skb(struct __sk_buff *skb)
{
	struct wk_egress_sock *mark;
	struct bpf_sock *sk;
	__u32 addr[4];

	sk = skb->sk;
	if (!sk)
		return SYS_PROCEED;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return SYS_PROCEED;
	mark = bpf_sk_storage_get(&wk_egress_sock, sk, NULL, 0);
	if (!mark || !routes_by_itself(skb, addr))
		return SYS_PROCEED;
	return route_verdict(sk, mark, addr);
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
