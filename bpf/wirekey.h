/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The contract between wirekey's BPF programs and the controller.
 *
 * Plain C types only, so both clang -target bpf and the controller's layout
 * check (controller/datapath/layout.ts, verified against the object's BTF at
 * load time) see the same thing. Every struct has explicit padding and a
 * size assertion: a change here must be made on both sides.
 *
 * Every constant the controller also uses is a member of a named enum, not
 * a #define, so that it reaches the object's BTF: the controller checks its
 * own copy of each enum there, member by member (verifyConstants), and
 * refuses to load an object whose numbers differ. Each enum is anchored in
 * BTF by a never-read pointer global (redirect.bpf.c, http-inject.bpf.c).
 */
#ifndef WIREKEY_H
#define WIREKEY_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Map capacities and limits; the README states them. */
enum wk_limits {
	WK_MAX_CGROUPS = 4096,
	WK_MAX_EXES = 4096,
	WK_MAX_UIDS = 4096,
	WK_MAX_BINDINGS = 4096,
	WK_MAX_CONNS = 65536,
	WK_MAX_TASKS = 131072,
	/*
	 * Workloads are numbered 1..WK_MAX_WORKLOADS in precedence order;
	 * workload n is bit n-1 of a wk_mask. When several workloads match a
	 * process, the lowest number (the most specific workload) wins. The
	 * policy checker's limit is this one (controller/policy/precedence.ts).
	 */
	WK_MASK_WORDS = 4,
	WK_MAX_WORKLOADS = WK_MASK_WORDS * 64,
	/* Deepest cgroup level searched for a bound ancestor. */
	WK_MAX_CGROUP_DEPTH = 32,
};

/* wk_bind_val.action: what connect() does for (workload, port). */
enum wk_action {
	WK_ACTION_PROXY = 1,
};

/* A set of workloads. */
struct wk_mask {
	__u64 bits[WK_MASK_WORDS];
};

/*
 * An executable file, as the kernel knows it: its struct inode, read from
 * the struct file the kernel executes (exec) or the agent holds open (the
 * selector's file). stat()'s (st_dev, st_ino) is not that: on btrfs st_dev
 * is the subvolume's device, on an overlay whose layers are on different
 * file systems it is the layer's, and neither is the superblock device the
 * inode carries. (dev, ino) alone is not unique either: btrfs numbers each
 * subvolume's inodes from 256 under one superblock, and such an overlay
 * shows every layer's inode numbers under its one device. The inode's
 * address is unique among the inodes alive, and every inode a key names is
 * kept alive: by the process running it, or by the agent holding the file.
 */
struct wk_exe_key {
	__u64 ino;		/* i_ino */
	__u32 dev;		/* i_sb->s_dev: kernel dev_t (MKDEV(major, minor)) */
	__u32 _pad;
	__u64 inode;		/* the struct inode's address */
};

/* A regular file the agent holds open, as wk_agent_files reports it. */
struct wk_agent_file {
	__s32 fd;
	__u32 _pad;
	struct wk_exe_key key;
};

/*
 * The workloads that place no constraint of a kind: a workload without an
 * executable selector matches any executable, and so on.
 */
struct wk_any {
	struct wk_mask cgroup;
	struct wk_mask exe;
	struct wk_mask uid;
};

/* Indexes of wk_stats counters. */
enum wk_stat {
	WK_STAT_TASKS_FULL = 0,		/* a process could not be recorded: wk_task_exe is full */
	WK_STAT_STORAGE_FAIL = 1,	/* a redirect was refused: no socket storage */
	WK_STAT_PORT_BIND = 2,		/* a bind() to the proxy port by a uid other than 0 was refused */
	WK_STAT_MAX = 8,		/* entries of wk_stats (room to grow) */
};

/* Key of wk_bind_port. */
struct wk_bind_key {
	__u32 workload_id;
	__u16 port;		/* destination port, host byte order */
	__u16 _pad;
};

struct wk_bind_val {
	__u32 action;		/* WK_ACTION_* */
	__u32 _pad;
};

/*
 * What connect() recorded for a redirected socket: where the workload was
 * going and who it is. Kept in socket-local storage (freed with the socket)
 * and copied into wk_conn once the connection is established.
 */
struct wk_orig_dst {
	__u32 addr[4];		/* network byte order; IPv4 as ::ffff:a.b.c.d */
	__u16 port;		/* network byte order */
	__u16 family;		/* AF_INET or AF_INET6: the caller's socket */
	__u32 workload_id;
	__u32 pid;		/* tgid of the caller at connect() */
	__u32 uid;
	__u64 cgroup_id;
};

/*
 * Key of wk_conn: the redirected socket's local address as the proxy sees it
 * in the accepted socket's peer address.
 */
struct wk_conn_key {
	__u32 addr[4];		/* network byte order; IPv4 as ::ffff:a.b.c.d */
	__u16 port;		/* host byte order */
	__u16 _pad;
};

#define WK_ASSERT_SIZE(type, size) \
	_Static_assert(sizeof(struct type) == (size), "struct " #type " layout changed")

WK_ASSERT_SIZE(wk_mask, 32);
WK_ASSERT_SIZE(wk_exe_key, 24);
WK_ASSERT_SIZE(wk_agent_file, 32);
WK_ASSERT_SIZE(wk_any, 96);
WK_ASSERT_SIZE(wk_bind_key, 8);
WK_ASSERT_SIZE(wk_bind_val, 8);
WK_ASSERT_SIZE(wk_orig_dst, 40);
WK_ASSERT_SIZE(wk_conn_key, 20);

/*
 * Kernel HTTP datapath (http-inject.bpf.c): plaintext HTTP/1.1 to
 * policy-pinned addresses gets its credential header from an sk_msg
 * program, with no user-space hop.
 */
#ifndef __VMLINUX_H__
#include <linux/bpf.h>		/* struct bpf_spin_lock */
#endif

enum wk_http_limits {
	WK_HTTP_MAX_DESTS = 4096,	/* pinned (address prefix, port) pairs */
	/* wk_http_dest_key.prefixlen of one exact address: port, pad and 128 address bits */
	WK_HTTP_DEST_EXACT = 160,
	WK_HTTP_MAX_SOCKS = 65536,	/* live kernel-path connections */
	WK_HTTP_LINE_MAX = 512,		/* longest injected header line, CRLF included */
	WK_HTTP_HEAD_MAX = 8192,	/* longest request head (request line to CRLFCRLF) */
	/* wk_http_events: bytes of ring buffer, and how much may wait before a wake-up */
	WK_HTTP_EVENTS_SIZE = 1 << 20,
	WK_HTTP_EVENTS_WAKE = 64 << 10,
	/*
	 * wk_http_usage: (binding, header version, epoch) counters. The agent
	 * deletes an entry once it is summarised and no longer current, so a
	 * few versions per binding at most are live at once.
	 */
	WK_HTTP_MAX_USAGE = 4 * WK_MAX_BINDINGS,
};

/* wk_http_hdr.state */
enum wk_http_hdr_state {
	WK_HTTP_UNBOUND = 0,		/* no binding (a removed one): connections are left alone */
	WK_HTTP_INJECT = 1,		/* bound: line[] is added to every request */
	WK_HTTP_WITHHOLD = 2,		/* bound, but no credential now: requests are refused */
};

/*
 * Indexes of wk_http_stats counters, and the reason of a wk_http_event:
 * the controller names audit reasons by these numbers, so a reordered
 * member fails the load (verifyConstants) instead of mislabelling one.
 */
enum wk_http_stat {
	WK_HTTP_STAT_INJECTED = 0,	/* requests that got the header */
	WK_HTTP_STAT_CORKED = 1,	/* writes held back until the head was complete */
	WK_HTTP_STAT_REFUSED_HEAD_SIZE = 2,	/* head longer than WK_HTTP_HEAD_MAX */
	WK_HTTP_STAT_REFUSED_MALFORMED = 3,	/* request line, header syntax, bare CR/LF, obs-fold, NUL */
	WK_HTTP_STAT_REFUSED_TRANSFER = 4,	/* Transfer-Encoding other than one "chunked" on HTTP/1.1, or with Content-Length */
	WK_HTTP_STAT_REFUSED_UPGRADE = 5,	/* Upgrade or Connection: upgrade, other than a WebSocket upgrade GET without a body */
	WK_HTTP_STAT_REFUSED_HEADER = 6,	/* the client sent the injected header itself */
	WK_HTTP_STAT_REFUSED_LENGTH = 7,	/* duplicate, empty or oversized Content-Length */
	WK_HTTP_STAT_REFUSED_BINDING = 8,	/* binding or pin removed or changed, epoch bumped */
	WK_HTTP_STAT_REFUSED_STREAM = 9,	/* bytes that bypassed the program: TFO, urgent data, desync */
	WK_HTTP_STAT_REFUSED_INTERNAL = 10,	/* a helper failed (memory) */
	WK_HTTP_STAT_DROPPED = 11,	/* writes dropped on a refused connection */
	WK_HTTP_STAT_SOCKHASH_FULL = 12,	/* connection left uninjected: wk_http_socks was full */
	WK_HTTP_STAT_STORAGE_FAIL = 13,	/* connect() refused: no socket storage */
	WK_HTTP_STAT_REFUSED_BUSY = 14,	/* send buffer too full to queue the injected line whole */
	WK_HTTP_STAT_REFUSED_FASTOPEN = 15,	/* connect() refused: TCP Fast Open */
	WK_HTTP_STAT_EVENTS_LOST = 16,	/* events not recorded: wk_http_events was full */
	WK_HTTP_STAT_REFUSED_CHUNKED = 17,	/* malformed chunked framing: size, extension, CRLF, trailers */
	WK_HTTP_STAT_REFUSED_METHOD = 18,	/* a method not on the allow-list (TRACE, TRACK, CONNECT, unknown; any case) */
	WK_HTTP_STAT_REFUSED_PUSH = 19,	/* the kernel failed to queue an approved write (memory, SO_SNDTIMEO, signal) */
	WK_HTTP_STAT_REFUSED_HOST = 20,	/* Host (or absolute-form authority) not one of the service's hosts, missing or duplicated */
	WK_HTTP_STAT_REFUSED_AGENT = 21,	/* no live agent: wk_http_config.alive_until has passed */
	WK_HTTP_STAT_REFUSED_CREDENTIAL = 22,	/* bound, but the credential is withheld (unreadable, or no header can carry it) */
	WK_HTTP_STAT_PASSTHROUGH = 23,	/* connections passed through untouched after an injected WebSocket upgrade */
	WK_HTTP_STAT_USAGE_FULL = 24,	/* injected requests not in wk_http_usage: it was full (still in WK_HTTP_STAT_INJECTED) */
	WK_HTTP_STAT_MAX = 25,
};

/* wk_http_event.kind */
enum wk_http_event_kind {
	WK_HTTP_EVENT_INJECTED = 1,	/* a request got the header (reason WK_HTTP_STAT_INJECTED) */
	WK_HTTP_EVENT_REFUSED = 2,	/* a request or connect() was refused (reason WK_HTTP_STAT_*) */
};

/* Key of wk_http_dest: a pinned plaintext destination. */
struct wk_http_dest_key {
	__u32 prefixlen;	/* LPM trie: bits of what follows that must match; 32 + address prefix */
	__u16 port;		/* host byte order; always matched whole */
	__u16 _pad;		/* always 0 */
	__u32 addr[4];		/* network byte order; IPv4 as ::ffff:a.b.c.d */
};

struct wk_http_dest_val {
	__u32 service_id;
	__u32 flags;		/* WK_HTTP_DEST_* */
};

/*
 * Plaintext services that list hosts (Service spec.hosts with tls: false):
 * a request's Host, and an absolute-form target's authority, must be one of
 * them.
 */
enum wk_http_hosts {
	WK_HTTP_DEST_CHECK_HOST = 1,	/* wk_http_dest_val.flags: the service lists hosts */
	WK_HTTP_HOST_MAX = 253,		/* longest host name (DNS), trailing dot not counted */
	WK_HTTP_HOST_KEY_NAME = 256,	/* bytes of wk_http_host_key.name */
	WK_HTTP_MAX_HOSTS = 4096,	/* (service, host) pairs, all services together */
};

/*
 * Key of wk_http_host: one host a plaintext service answers to, lower-case,
 * without port or trailing dot; name[] is zero after len. The value is
 * unused (a u32, 1).
 */
struct wk_http_host_key {
	__u32 service_id;
	__u32 len;		/* bytes of name[] used, 1..WK_HTTP_HOST_MAX */
	__u8 name[WK_HTTP_HOST_KEY_NAME];
};

/* Key of wk_http_hdr. */
struct wk_http_hdr_key {
	__u32 workload_id;
	__u32 service_id;
};

/*
 * The header line a binding injects. The controller replaces it in place
 * with BPF_F_LOCK and the program copies it under the same lock, so a
 * request carries the old line or the new one, never a mix.
 */
struct wk_http_hdr {
	struct bpf_spin_lock lock;
	__u16 state;		/* WK_HTTP_* */
	__u16 len;		/* bytes of line[] used, CRLF included */
	__u16 name_len;		/* bytes of the header name, before ':' */
	__u16 _pad;
	__u32 version;		/* the controller's counter, for audit and tests */
	/*
	 * Moved on when the workload's selectors change: a connection made
	 * under another selection (its processes judged by other selectors)
	 * has its next request refused.
	 */
	__u32 selection;
	__u32 _pad2;
	__u8 line[WK_HTTP_LINE_MAX];	/* "Name: value\r\n" */
};

/* wk_http_config.flags */
enum wk_http_cfg_flag {
	WK_HTTP_CFG_AUDIT_REQUESTS = 1,	/* an injected event per request, not per connection and header version */
	/*
	 * The failed-push watch (fexit/tcp_bpf_push) is attached, and refuses
	 * urgent data as it is pushed: new connections are not watched
	 * segment by segment (see watch_urgent() in http-inject.bpf.c).
	 */
	WK_HTTP_CFG_PUSH_WATCH = 2,
};

/* Key 0 of wk_http_config. */
struct wk_http_config {
	__u32 epoch;		/* bumped when workload or service ids change meaning */
	__u32 flags;		/* WK_HTTP_CFG_* */
	/*
	 * The agent's heartbeat: bpf_ktime_get_ns() (CLOCK_MONOTONIC) until
	 * which it is known to be alive. Past it, no header is injected and
	 * requests are refused (WK_HTTP_STAT_REFUSED_AGENT); 0 refuses at once.
	 */
	__u64 alive_until;
};

/*
 * One record of the wk_http_events ring buffer, for the audit log. Never
 * any header bytes: the header line is named by its version only. Who is
 * the process that connected (as the proxy path reports it); destination
 * and socket as connect() saw them.
 */
struct wk_http_event {
	__u64 time_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cookie;		/* socket cookie */
	__u64 cgroup_id;	/* the connecting process's cgroup at connect() */
	__u32 addr[4];		/* destination, network byte order; IPv4 as ::ffff:a.b.c.d */
	__u16 port;		/* destination port, host byte order */
	__u8 kind;		/* WK_HTTP_EVENT_* */
	__u8 reason;		/* WK_HTTP_STAT_* */
	__u32 pid;		/* tgid of the connecting process */
	__u32 uid;
	__u32 workload_id;
	__u32 service_id;
	__u32 version;		/* wk_http_hdr.version of the line sent (or last copied); 0 if none */
};

/*
 * Key of wk_http_usage (a per-CPU hash): the requests a binding injected
 * with one version of its header line, on connections made under one id
 * epoch (the epoch tells an entry written under an earlier numbering of
 * workloads from a current one).
 */
struct wk_http_usage_key {
	__u32 workload_id;
	__u32 service_id;
	__u32 version;		/* wk_http_hdr.version of the line sent */
	__u32 epoch;		/* wk_http_config.epoch the connection was made under */
};

/* Value of wk_http_usage, one per CPU: the agent sums them. */
struct wk_http_usage {
	__u64 requests;		/* injected on this CPU since the entry was made */
	__u64 first_ns;		/* bpf_ktime_get_ns() of the first of them */
	__u64 last_ns;		/* and of the latest */
};

WK_ASSERT_SIZE(wk_http_dest_key, 24);
WK_ASSERT_SIZE(wk_http_dest_val, 8);
WK_ASSERT_SIZE(wk_http_host_key, 264);
WK_ASSERT_SIZE(wk_http_hdr_key, 8);
WK_ASSERT_SIZE(wk_http_hdr, 536);
WK_ASSERT_SIZE(wk_http_config, 16);
WK_ASSERT_SIZE(wk_http_event, 64);
WK_ASSERT_SIZE(wk_http_usage_key, 16);
WK_ASSERT_SIZE(wk_http_usage, 24);

/*
 * Egress policy (egress.bpf.h, egress.bpf.c): a restricted workload's
 * connect() and unconnected sendmsg() go only where one of its rules
 * allows, judged in the kernel before any packet leaves.
 */
enum wk_egress_limits {
	/*
	 * Prefix entries of wk_egress_rules the policy may use, all workloads
	 * together. The map holds twice as many, so that a reload can write a
	 * workload's new set before deleting its old one whatever the sizes.
	 */
	WK_EGRESS_MAX_PREFIXES = 8192,
	WK_EGRESS_MAP_ENTRIES = 2 * WK_EGRESS_MAX_PREFIXES,
	WK_EGRESS_MAX_RANGES = 16,	/* port ranges in one prefix entry */
	/* wk_egress_key.prefixlen of bits before the address: set id, protocol, pad */
	WK_EGRESS_KEY_FIXED = 64,
	WK_EGRESS_EVENTS_SIZE = 256 << 10,	/* bytes of the wk_egress_events ring buffer */
};

/* wk_egress_policy.flags */
enum wk_egress_flag {
	WK_EGRESS_RESTRICTED = 1,	/* the workload has an egress policy */
	WK_EGRESS_AUDIT = 2,		/* log what would be refused, refuse nothing */
};

/* wk_egress_key.protocol and wk_egress_event.protocol: IPPROTO_* */
enum wk_egress_proto {
	WK_EGRESS_TCP = 6,
	WK_EGRESS_UDP = 17,
};

/* wk_egress_event.verdict */
enum wk_egress_verdict {
	WK_EGRESS_REFUSED = 1,		/* enforce: the call failed with EPERM */
	WK_EGRESS_WOULD_REFUSE = 2,	/* audit: the call went ahead */
};

/* wk_egress_event.hook */
enum wk_egress_hook {
	WK_EGRESS_HOOK_CONNECT = 1,
	WK_EGRESS_HOOK_SENDMSG = 2,
	WK_EGRESS_HOOK_SOCKET = 3,	/* socket(): a kind of socket no rule can name */
	/*
	 * IPv4 options or an IPv6 routing header, which send a packet by
	 * hops of their own choosing whatever connect() or sendmsg() was
	 * judged against: setsockopt() (IP_OPTIONS, IPV6_RTHDR, ...) or a
	 * packet that carries them (set by a control message).
	 */
	WK_EGRESS_HOOK_ROUTE = 4,
};

/*
 * Indexes of a workload's counters in wk_egress_stats: workload w's
 * counter s is entry w * WK_EGRESS_STAT_MAX + s.
 */
enum wk_egress_stat {
	WK_EGRESS_STAT_REFUSED = 0,	/* calls refused (enforce) */
	WK_EGRESS_STAT_WOULD_REFUSE = 1,	/* calls that audit mode let through */
	WK_EGRESS_STAT_EVENTS_LOST = 2,	/* events not recorded: wk_egress_events was full */
	WK_EGRESS_STAT_MAX = 3,
};

/* Value of wk_egress_policy, keyed by workload id: replaced whole, in one update. */
struct wk_egress_policy {
	__u32 flags;		/* WK_EGRESS_* */
	__u32 set_id;		/* the rule set in wk_egress_rules */
};

/*
 * Key of wk_egress_rules (LPM trie). prefixlen counts WK_EGRESS_KEY_FIXED
 * bits of set id, protocol and pad (always matched whole), then the
 * address bits. IPv4 and IPv6 are one address space, IPv4 as
 * ::ffff:a.b.c.d: an IPv4 prefix /n has 96 + n address bits, an
 * IPv4-mapped destination is its IPv4 address, and an IPv6 prefix that
 * contains ::ffff:0:0/96 (::/0) contains every IPv4 address too.
 */
struct wk_egress_key {
	__u32 prefixlen;
	__u32 set_id;
	__u8 protocol;		/* WK_EGRESS_TCP, WK_EGRESS_UDP */
	__u8 _pad[3];		/* always 0 */
	__u32 addr[4];		/* network byte order; IPv4 as ::ffff:a.b.c.d */
};

/* Destination ports one rule allows, inclusive, host byte order. */
struct wk_egress_range {
	__u16 lo;
	__u16 hi;
	__u32 rule_id;		/* PlanEgressRule.id */
};

/*
 * Value of wk_egress_rules: the ports allowed under a prefix, its own
 * rules' and those of every shorter prefix of the same set that contains
 * it (the controller flattens them), so the longest match decides alone.
 */
struct wk_egress_val {
	__u32 count;		/* ranges[] used, 0..WK_EGRESS_MAX_RANGES */
	__u32 _pad;
	struct wk_egress_range ranges[WK_EGRESS_MAX_RANGES];
};

/*
 * One record of the wk_egress_events ring buffer: a refused or would-refuse
 * call. A socket() event (WK_EGRESS_HOOK_SOCKET) has no destination: addr
 * and port are 0. A route event (WK_EGRESS_HOOK_ROUTE) has the packet's
 * destination, or none for setsockopt(); its pid, uid and cgroup are those
 * of the process that made the socket.
 */
struct wk_egress_event {
	__u64 time_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cgroup_id;	/* the caller's cgroup */
	__u32 addr[4];		/* destination, network byte order; IPv4 as ::ffff:a.b.c.d */
	__u16 port;		/* destination port, host byte order */
	__u8 protocol;		/* IPPROTO_* of the socket */
	__u8 verdict;		/* WK_EGRESS_REFUSED, WK_EGRESS_WOULD_REFUSE */
	__u8 hook;		/* WK_EGRESS_HOOK_* */
	__u8 sock_type;		/* SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, ... */
	__u8 family;		/* AF_INET, AF_INET6 */
	__u8 _pad;
	__u32 pid;		/* tgid of the caller */
	__u32 uid;
	__u32 workload_id;
	__u32 set_id;		/* the rule set it was judged against */
};

WK_ASSERT_SIZE(wk_egress_policy, 8);
WK_ASSERT_SIZE(wk_egress_key, 28);
WK_ASSERT_SIZE(wk_egress_range, 8);
WK_ASSERT_SIZE(wk_egress_val, 8 + 8 * WK_EGRESS_MAX_RANGES);
WK_ASSERT_SIZE(wk_egress_event, 56);

#endif /* WIREKEY_H */
