// SPDX-License-Identifier: GPL-2.0-only
/*
 * Kernel HTTP datapath: add a binding's credential header to every
 * plaintext HTTP/1.1 request a bound workload sends to a policy-pinned
 * address, in the kernel, on the workload's own connection.
 *
 *   connect()  wk_http_connect4/6: the caller's workload (workload.bpf.h,
 *              the same rule as the proxy redirect) and the destination
 *              (wk_http_dest: pinned port and address prefix -> service) name a
 *              binding in wk_http_hdr; if so, socket storage records
 *              (workload, service, destination, epoch).
 *   sockops    wk_http_sockops, on ACTIVE_ESTABLISHED: a socket whose
 *              storage says "bound" and that really reached that pinned
 *              destination goes into the wk_http_socks sockhash, and the
 *              stream accounting starts (see below).
 *   sk_msg     wk_http_msg, on every write of a socket in wk_http_socks:
 *              follows request boundaries and inserts the header line
 *              right after the request line of every request, once.
 *   fexit      wk_http_push_done, after every tcp_bpf_push: a write the
 *              kernel failed to queue refuses the connection (approve()),
 *              and so does urgent data (watch_urgent()).
 *
 * Framing. Per socket, `left` is the number of bytes known to be safe to
 * pass from the last accounted stream position: the rest of the current
 * request (head, injected line, Content-Length body), or, in a chunked
 * body, the framing scanned and the data it announced. Each run first
 * brings it up to date from the socket's write_seq, so the program never
 * trusts its own idea of where the stream is; a byte that reached the
 * stream without being approved by the run before is caught there.
 *   - left > 0: the rest of a request. Passed untouched, in chunks the
 *     socket can queue without waiting (see approve(): a push that fails
 *     part way would let the kernel pass later bytes unseen).
 *   - left == 0 in a chunked body (SOCK_CHUNKED): the framing goes on
 *     here. See "Chunked bodies".
 *   - left == 0 otherwise: a request starts here. The head (request line
 *     through CRLFCRLF, at most WK_HTTP_HEAD_MAX bytes) must be complete
 *     before anything is decided: an incomplete head is corked
 *     (bpf_msg_cork_bytes) and the program runs again on the whole head
 *     when more bytes are written, carrying on where its scan stopped.
 *     The head is checked byte by byte (bpf_loop; plain runs 8 bytes at
 *     once, see head_word()), the line is inserted after the request line
 *     (a request written whole in at most WK_HTTP_REBUILD_MAX bytes is
 *     rebuilt with the line in one new piece pushed in front of it, and
 *     its old bytes popped: see rebuild(); another gets the line pushed
 *     after its request line, is then copied into one piece by
 *     bpf_msg_pull_data and the line written into that copy; never into
 *     the workload's pages), and `left`
 *     becomes head + line + Content-Length. A Content-Length body is never
 *     parsed, so text in a body that looks like a request is never taken
 *     for one.
 * Chunked bodies. A request whose one Transfer-Encoding line says exactly
 * "chunked" (HTTP/1.1, no Content-Length) gets its line like any other,
 * and `left` covers head + line; from there the socket is in a chunked
 * body, where nothing is ever inserted, so nothing is ever corked: the
 * program only has to find where the body ends. Each time `left` runs out
 * it scans the framing at the start of the message (chunk_byte(), up to
 * WK_HTTP_CHUNK_WINDOW bytes, state in socket storage): the chunk-size
 * line, the CRLF after each chunk's data, the last chunk and the trailer
 * section. Data is stepped over by count, never looked at, so data that
 * looks like framing or like a request is neither. `left` becomes exactly
 * the bytes scanned plus, when a chunk's data runs past the window, that
 * data: the scan's state always belongs to the stream position where
 * `left` ends, so a size line, a CRLF or a trailer split across writes
 * (one byte a write included) carries on in the next run, and the byte
 * after the trailer section's empty line is the next request's first.
 * Approvals go through approve() like any other.
 * Only SK_PASS is used to send: a redirect to the socket itself would
 * release the socket lock around the push (another thread's bytes could
 * then precede an injected line) and, after a cork, frees the message's
 * tail on the kernels this targets.
 *
 * Files. The head scanner (head_byte() and head_word(), http-head.bpf.h)
 * and the framing scanner (chunk_step(), http-chunked.bpf.h) are plain C
 * over their state in socket storage and one byte (or, for head_word(),
 * one 8-byte word), with no helper in them: this file's bpf_loop callbacks
 * (scan_byte(), chunk_byte()) fetch the bytes, and
 * the unit tests run the same headers compiled for the host
 * (test/native/http-parser-host.c). The counters and the event ring are in
 * http-events.bpf.h, the send-queue room an approval may take
 * (queue_room()) in http-sendq.bpf.h; this file keeps the programs and
 * what they decide.
 *
 * The refusal rule. A request the program cannot handle with certainty is
 * refused: the write is dropped from where the program stopped approving
 * (SK_DROP: none of those bytes is sent, and sendmsg fails with EACCES, or
 * returns the count of what an earlier part of the same write already
 * sent) and the connection is marked refused, so every later write on it
 * is dropped too (the kernel's DROP verdict is sticky as well). Nothing
 * half-injected or reframed ever leaves: the upstream sees the requests
 * before the refused one, complete (or, for framing refused inside a
 * chunked body, that request up to the refused write), and then nothing
 * more on that connection. Refused, each with its own counter in
 * wk_http_stats:
 *   - a head longer than WK_HTTP_HEAD_MAX (8 KiB);
 *   - anything but "TOKEN SP TARGET SP HTTP/1.0|1 CRLF", header lines
 *     "token: value CRLF": obs-fold, bare CR or LF, NUL and other controls,
 *     space before the colon, an empty name;
 *   - Transfer-Encoding other than one line whose value is exactly
 *     "chunked" (any case, optional whitespace around) on HTTP/1.1:
 *     another coding or a list ("gzip, chunked", "chunked, chunked"),
 *     parameters, an empty value, two Transfer-Encoding lines, on
 *     HTTP/1.0, or together with Content-Length (either order);
 *   - malformed chunked framing (WK_HTTP_STAT_REFUSED_CHUNKED): a
 *     chunk-size that is not 1 to 15 hex digits (no sign, "0x" or
 *     whitespace), extensions other than token characters, ';', '=', SP
 *     and HT (so no quoted strings) or longer than 1 KiB, a chunk's data
 *     not followed by CRLF, a bare CR or LF anywhere in the framing,
 *     controls, trailer lines that are not "token: value CRLF" (obs-fold,
 *     an empty name, space before the colon) or a trailer section over
 *     8 KiB;
 *   - a method other than GET HEAD POST PUT PATCH DELETE OPTIONS, spelled
 *     exactly so (RFC 9110: methods are case-sensitive): TRACE and TRACK
 *     (the upstream would echo the credential back), CONNECT (a tunnel),
 *     "connect", "Get", WebDAV and other unknown methods
 *     (WK_HTTP_STAT_REFUSED_METHOD; see method_allowed());
 *   - Upgrade, or Connection containing "upgrade", except a WebSocket
 *     upgrade (below): another protocol (h2c), two Upgrade lines, a list,
 *     a body, another method than GET, HTTP/1.0;
 *   - two Host lines, listed hosts or not; and, for a service that lists
 *     hosts (WK_HTTP_DEST_CHECK_HOST), a request without Host, or whose
 *     Host or absolute-form target ("http://" only) names another host,
 *     another port than the service's, or is not a plain host[:port]
 *     (WK_HTTP_STAT_REFUSED_HOST; see host_check());
 *   - the injected header already present (e.g. the client's own
 *     Authorization), in the head or as a trailer;
 *   - Content-Length duplicated, empty, not all digits or over 15 digits;
 *   - the binding gone, the destination no longer pinned to the same
 *     service, the id epoch bumped, or the workload's selectors changed
 *     since connect() (wk_http_hdr.selection); or the binding withheld (no
 *     credential now: WK_HTTP_STAT_REFUSED_CREDENTIAL);
 *   - bytes that reached the stream without this program seeing them:
 *     urgent data (MSG_OOB: the receiver takes that byte out of the
 *     stream), a write that started before the connection was established
 *     (a non-blocking connect() followed by a blocking write: that write
 *     goes out untouched, then the connection is refused), or any other
 *     mismatch between write_seq and what the run before approved;
 *   - a request head arriving while the send buffer is too full to queue
 *     the request line and the injected line in one piece (see approve());
 *   - a write the kernel failed to queue (memory pressure, SO_SNDTIMEO, a
 *     signal): from that write on (WK_HTTP_STAT_REFUSED_PUSH; see
 *     approve() and wk_http_push_done, which needs fexit).
 * TCP Fast Open is refused earlier, at connect() (EPERM).
 *
 * WebSocket. A request that asks to upgrade is allowed only as a WebSocket
 * upgrade: GET on HTTP/1.1, exactly one "Upgrade: websocket", Connection
 * naming upgrade, no Transfer-Encoding and no Content-Length but 0
 * (upgrade_ok(), http-head.bpf.h). It is checked and injected like any
 * request; the socket's copy of the line is then wiped and, once the
 * request's bytes are passed, the connection is pass-through
 * (SOCK_TUNNEL, counted in WK_HTTP_STAT_PASSTHROUGH): every later byte
 * passes unparsed and nothing is ever injected on it again, whatever the
 * upstream answered (101 or not). The only credential bytes on such a
 * connection are those of that one request; a request the workload sends
 * after a refused upgrade goes out as the workload wrote it, with no line.
 *
 * Without an agent. The controller refreshes wk_http_config.alive_until
 * (a CLOCK_MONOTONIC deadline, its run's timeout ahead) every second from
 * its event loop; once it has passed, every request is refused
 * (WK_HTTP_STAT_REFUSED_AGENT) before anything is injected, so an agent
 * killed or hung stops injection within that timeout. A stopping agent sets
 * it to 0 first and then wipes the lines in wk_http_hdr. Open sockets keep
 * this program and its maps as long as wk_http_socks lives, even after the
 * agent is gone (the map being freed would send them on bare), so the
 * controller keeps a previous instance's non-empty sockhash pinned, in a
 * draining directory, with its wk_http_config, which the next agent sets to
 * 0 at once. A refusal also clears the socket's copy of the line.
 *
 * Usage. Every injected request is counted in wk_http_usage, a per-CPU
 * hash keyed by (workload, service, header version, epoch): the agent
 * sums and summarises it for the audit log ("how often", exactly), and
 * feeds its request metrics from it. A lookup and two stores per request,
 * no event.
 *
 * Events. Every refusal (each one counted above, at connect(), in sockops
 * or in sk_msg), and every injection once per connection and header
 * version (its first request, and the first after each rotation), goes
 * into the wk_http_events ring buffer for the audit log: who connected,
 * the binding, the destination, the socket cookie and the header's
 * version, never its bytes. With WK_HTTP_CFG_AUDIT_REQUESTS in
 * wk_http_config, every injected request is reported instead. An event
 * never changes a decision: when the ring is full it is lost, and
 * counted. Injections do not wake the reader until WK_HTTP_EVENTS_WAKE
 * bytes are waiting, and then once per read of the reader (the controller
 * also drains the ring on a timer); a refusal wakes the reader at once.
 * (A write on a socket without storage, which cannot happen, is only
 * counted: there is nothing to report.)
 *
 * Header bytes live in wk_http_hdr, keyed by (workload, service). The
 * controller replaces a value in place under its bpf_spin_lock
 * (BPF_F_LOCK); the program copies it into socket storage under the same
 * lock as a request starts, and again each time a held-back head resumes,
 * so a request carries the whole old line or the whole new one, as it was
 * when the request's head was complete.
 *
 * The programs are not loaded unless asked for (SEC("?...")): an agent
 * without kernel-path bindings loads the object exactly as before, and a
 * kernel that refuses them cannot stop it from starting. The controller
 * turns them on between open and load (KernelHttp.enable).
 *
 * Minimum kernel: 5.17, for bpf_loop (5.17). Also used: the sockops
 * header-option callback (5.10, to watch for urgent data), socket storage
 * and msg->sk in sk_msg (5.8), the BPF ring buffer (5.8),
 * bpf_skc_to_tcp_sock with BTF reads from networking programs (5.9), cgroup bpf_link (5.7), bpf_spin_lock and
 * BPF_F_LOCK (5.1), bpf_msg_push_data, bpf_msg_pop_data and
 * bpf_msg_cork_bytes (4.17-5.0),
 * and, for wk_http_push_done, fexit (5.5) with socket storage from tracing
 * programs (5.11) on a kernel whose BTF has tcp_bpf_push as a function; a
 * kernel that refuses fexit (no ftrace direct calls, lockdown) runs the
 * rest without it (KernelHttp.pushWatch).
 * Debian 12's 6.1 has them all (verified on 6.18 here; 6.1 is for
 * vm-tests). The sk_msg program is attached to the sockhash with
 * bpf_prog_attach (no sk_msg bpf_link before 6.10).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "workload.bpf.h"
#include "sockops.bpf.h"
#include "http-head.bpf.h"
#include "http-chunked.bpf.h"
#include "http-events.bpf.h"
#include "http-sendq.bpf.h"

#define SOCK_STREAM	1
#define IPPROTO_TCP	6

#define SYS_PROCEED	1
#define SYS_REJECT	0

#define BPF_ANY		0
#define BPF_NOEXIST	1

/* wk_http_sock.flags */
#define SOCK_BOUND	1	/* connect() found a binding for this destination */
#define SOCK_ARMED	2	/* in wk_http_socks, stream accounting started */
#define SOCK_REFUSED	4	/* every later write is dropped */
#define SOCK_CHUNKED	8	/* in a chunked request body: framing is followed, nothing injected */
#define SOCK_OPAQUE	16	/* the last approval held body data only (see approve()) */
#define SOCK_UPGRADED	32	/* a WebSocket upgrade was injected: pass-through once its bytes are passed */
#define SOCK_TUNNEL	64	/* pass-through: every byte passes, unparsed; nothing is injected again */
#define SOCK_NO_REBUILD	128	/* the kernel refused rebuild()'s pop: not tried again on this socket */

/*
 * pinned (port, address prefix) -> service. A longest-prefix-match trie, so
 * a policy can pin a CIDR; the controller refuses overlapping prefixes on
 * one port, so there is never more than one candidate.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, WK_HTTP_MAX_DESTS);
	__type(key, struct wk_http_dest_key);
	__type(value, struct wk_http_dest_val);
} wk_http_dest SEC(".maps");

/* (workload, service) -> header line; updated in place with BPF_F_LOCK */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WK_MAX_BINDINGS);
	__type(key, struct wk_http_hdr_key);
	__type(value, struct wk_http_hdr);
} wk_http_hdr SEC(".maps");

/*
 * (service, host) -> 1: the hosts a plaintext service that lists them
 * answers to (see host_check()). Only read when the destination's
 * wk_http_dest_val.flags say WK_HTTP_DEST_CHECK_HOST.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WK_HTTP_MAX_HOSTS);
	__type(key, struct wk_http_host_key);
	__type(value, __u32);
} wk_http_host SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wk_http_config);
} wk_http_config SEC(".maps");

/*
 * A ring buffer's records have no type in the map's BTF: this puts struct
 * wk_http_event into the object's BTF, where the controller checks its
 * layout (verifyLayouts). Never read.
 */
const struct wk_http_event *const wk_http_event_btf = 0;
/* The same for the constants the controller checks (verifyConstants). */
const enum wk_http_limits *const wk_http_limits_btf = 0;
const enum wk_http_hdr_state *const wk_http_hdr_state_btf = 0;
const enum wk_http_stat *const wk_http_stat_btf = 0;
const enum wk_http_event_kind *const wk_http_event_kind_btf = 0;
const enum wk_http_hosts *const wk_http_hosts_btf = 0;
const enum wk_http_cfg_flag *const wk_http_cfg_flag_btf = 0;


/*
 * A request of at most this many bytes (the line not counted) is rebuilt
 * around the line in one new piece (rebuild()); a longer one is copied.
 */
#define WK_HTTP_REBUILD_MAX	512

/* Kernel-only: never read by the controller. */
struct wk_http_sock {
	__u32 workload_id;
	__u32 service_id;
	__u32 epoch;
	__u32 flags;			/* SOCK_* */
	__u32 selection;		/* wk_http_hdr.selection at connect() */
	__u32 _pad;
	struct wk_http_dest_key dest;	/* where connect() was going */
	__u32 mark_seq;			/* write_seq when `left` was last brought up to date */
	__u32 approved;			/* bytes the last run let through (apply_bytes) */
	__u32 framing;			/* of `left`, the bytes at its start that decide framing (head, line, chunk framing) */
	__u64 left;			/* bytes safe to pass from mark_seq on: the rest of this request */
	struct wk_http_scan scan;
	struct wk_http_chunk chunk;
	/* the header line of the current request, copied under the lock */
	__u16 hdr_state;
	__u16 hdr_len;
	__u16 name_len;
	__u16 _pad2;
	__u32 version;
	__u32 audited_version;		/* header version last reported injected on this connection; 0: none */
	/* for events: the socket, and who connected */
	__u64 cookie;
	__u64 cgroup_id;
	__u32 pid;
	__u32 uid;
	__u8 line[WK_HTTP_LINE_MAX];
	/* a small request's bytes while it is rebuilt around the line (rebuild()) */
	__u8 buf[WK_HTTP_REBUILD_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct wk_http_sock);
} wk_http_sock SEC(".maps");

/* Established kernel-path connections, keyed by socket cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WK_HTTP_MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} wk_http_socks SEC(".maps");

/*
 * The event of a connection that got past connect(), from what its socket
 * storage recorded. A subprogram: called from many places, verified once
 * per call site but not copied into each.
 */
static __noinline void http_event(struct wk_http_sock *st, __u32 kind, __u32 reason)
{
	struct wk_http_event *e = event_reserve(kind, reason);

	if (!e)
		return;
	e->cookie = st->cookie;
	e->cgroup_id = st->cgroup_id;
	e->addr[0] = st->dest.addr[0];
	e->addr[1] = st->dest.addr[1];
	e->addr[2] = st->dest.addr[2];
	e->addr[3] = st->dest.addr[3];
	e->port = st->dest.port;
	e->pid = st->pid;
	e->uid = st->uid;
	e->workload_id = st->workload_id;
	e->service_id = st->service_id;
	e->version = st->version;
	event_submit(e, kind);
}

/*
 * A refused connection never injects again: its copy of the line goes. A
 * subprogram, so that refuse()'s many call sites do not each carry it.
 */
static __noinline void forget_line(struct wk_http_sock *st)
{
	__builtin_memset(st->line, 0, sizeof(st->line));
}

static __always_inline bool same_dest(const struct wk_http_dest_key *a,
				      const struct wk_http_dest_key *b)
{
	return a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] &&
	       a->addr[2] == b->addr[2] && a->addr[3] == b->addr[3] &&
	       a->port == b->port;
}

/* ---- connect() ---------------------------------------------------------- */

/* A refusal at connect(), before the socket has storage of its own. */
static __always_inline void connect_event(struct bpf_sock_addr *ctx,
					  const struct wk_http_dest_key *key,
					  const struct wk_http_hdr_key *hk,
					  __u32 version, __u32 reason)
{
	struct wk_http_event *e = event_reserve(WK_HTTP_EVENT_REFUSED, reason);

	if (!e)
		return;
	e->cookie = bpf_get_socket_cookie(ctx);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->addr[0] = key->addr[0];
	e->addr[1] = key->addr[1];
	e->addr[2] = key->addr[2];
	e->addr[3] = key->addr[3];
	e->port = key->port;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->workload_id = hk->workload_id;
	e->service_id = hk->service_id;
	e->version = version;
	event_submit(e, WK_HTTP_EVENT_REFUSED);
}

static __always_inline int http_connect(struct bpf_sock_addr *ctx,
					struct wk_http_dest_key *key)
{
	struct wk_http_hdr_key hk = {};
	struct wk_http_dest_val *dest;
	struct wk_http_config *cfg;
	struct wk_http_sock *st;
	struct wk_http_hdr *hdr;
	struct tcp_sock *tp;
	__u32 zero = 0, wid, epoch, selection;

	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return SYS_PROCEED;
	/* A socket connected again must not keep an earlier binding. */
	st = bpf_sk_storage_get(&wk_http_sock, ctx->sk, NULL, 0);
	if (st)
		st->flags = 0;
	if (is_agent())
		return SYS_PROCEED;
	/* Pinned addresses are the host's view of the network. */
	if (bpf_get_netns_cookie(ctx) != host_netns_cookie)
		return SYS_PROCEED;

	dest = bpf_map_lookup_elem(&wk_http_dest, key);
	if (!dest)
		return SYS_PROCEED;
	wid = current_workload();
	if (!wid)
		return SYS_PROCEED;
	hk.workload_id = wid;
	hk.service_id = dest->service_id;
	hdr = bpf_map_lookup_elem(&wk_http_hdr, &hk);
	if (!hdr || hdr->state == WK_HTTP_UNBOUND)
		return SYS_PROCEED;

	/*
	 * TCP Fast Open writes its data before the connection is established,
	 * so before sk_msg can see it: the request would leave uninjected and
	 * the stream position would be unknown. Refused at connect() (EPERM),
	 * whether asked for with TCP_FASTOPEN_CONNECT or by sendto(MSG_FASTOPEN).
	 */
	tp = bpf_skc_to_tcp_sock(ctx->sk);
	if (!tp || BPF_CORE_READ_BITFIELD(tp, fastopen_connect) || tp->fastopen_req) {
		http_count(WK_HTTP_STAT_REFUSED_FASTOPEN);
		connect_event(ctx, key, &hk, hdr->version, WK_HTTP_STAT_REFUSED_FASTOPEN);
		return SYS_REJECT;
	}
	/*
	 * The id epoch and the workload's selection the connection is made
	 * under, read between two judgements of the process. A reload writes
	 * the workloads' selectors before it moves either, so a process
	 * judged the same after reading them was judged by selectors at least
	 * as new as what it read. One whose workload changed in between (a
	 * reload under way) is refused, not bound under either.
	 */
	cfg = bpf_map_lookup_elem(&wk_http_config, &zero);
	epoch = cfg ? cfg->epoch : 0;
	selection = hdr->selection;
	if (current_workload() != wid) {
		http_count(WK_HTTP_STAT_REFUSED_BINDING);
		connect_event(ctx, key, &hk, hdr->version, WK_HTTP_STAT_REFUSED_BINDING);
		return SYS_REJECT;
	}
	st = bpf_sk_storage_get(&wk_http_sock, ctx->sk, NULL,
				BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		/* A bound workload must not reach the service unaccounted for. */
		http_count(WK_HTTP_STAT_STORAGE_FAIL);
		connect_event(ctx, key, &hk, hdr->version, WK_HTTP_STAT_STORAGE_FAIL);
		return SYS_REJECT;
	}
	st->workload_id = wid;
	st->service_id = hk.service_id;
	st->epoch = epoch;
	st->selection = selection;
	st->dest = *key;
	st->left = 0;
	st->version = 0;
	st->audited_version = 0;
	st->cookie = bpf_get_socket_cookie(ctx);
	st->cgroup_id = bpf_get_current_cgroup_id();
	st->pid = bpf_get_current_pid_tgid() >> 32;
	st->uid = (__u32)bpf_get_current_uid_gid();
	st->flags = SOCK_BOUND;
	return SYS_PROCEED;
}

SEC("?cgroup/connect4")
int wk_http_connect4(struct bpf_sock_addr *ctx)
{
	struct wk_http_dest_key key = {};

	key.prefixlen = WK_HTTP_DEST_EXACT;
	key.addr[2] = bpf_htonl(0xffff);
	key.addr[3] = ctx->user_ip4;
	key.port = bpf_ntohs((__u16)ctx->user_port);
	return http_connect(ctx, &key);
}

SEC("?cgroup/connect6")
int wk_http_connect6(struct bpf_sock_addr *ctx)
{
	struct wk_http_dest_key key = {};

	key.prefixlen = WK_HTTP_DEST_EXACT;
	key.addr[0] = ctx->user_ip6[0];
	key.addr[1] = ctx->user_ip6[1];
	key.addr[2] = ctx->user_ip6[2];
	key.addr[3] = ctx->user_ip6[3];
	key.port = bpf_ntohs((__u16)ctx->user_port);
	return http_connect(ctx, &key);
}

/* ---- established -------------------------------------------------------- */

/*
 * Urgent data (send() with MSG_OOB) stays in the byte stream this program
 * accounts for, but the receiver takes the urgent byte out of its stream
 * (unless it set SO_OOBINLINE): from then on the upstream's request
 * boundaries are no longer ours. Only a push made with MSG_OOB puts the
 * sender in urgent mode (tcp_mark_urg(): its urgent pointer ahead of
 * snd_una), from then until the byte is acknowledged, and the byte
 * cannot be acknowledged before it is transmitted. Urgent data is caught
 * before another header is injected, by one of two watches:
 *   - With the failed-push watch attached (WK_HTTP_CFG_PUSH_WATCH), by
 *     wk_http_push_done: every push whose flags hold MSG_OOB refuses the
 *     connection, whatever its verdict and however long the push waited
 *     for memory. That costs nothing per segment.
 *   - Without it (a kernel without BPF trampolines), here, when any
 *     segment goes out in urgent mode (BPF_SOCK_OPS_HDR_OPT_LEN_CB, run
 *     on every segment of a socket that asks for it).
 * And by wk_http_msg, if the next write comes while the byte is still
 * unacknowledged. (Outside urgent mode snd_up trails snd_una, briefly,
 * while an ACK is processed: only "ahead" counts.)
 */
static __always_inline bool urgent_pending(struct tcp_sock *tp)
{
	return (__s32)(tp->snd_up - tp->snd_una) > 0;
}

static __always_inline void refuse_urgent(struct wk_http_sock *st)
{
	if ((st->flags & (SOCK_ARMED | SOCK_REFUSED)) != SOCK_ARMED)
		return;
	st->flags |= SOCK_REFUSED;
	forget_line(st);
	http_count(WK_HTTP_STAT_REFUSED_STREAM);
	http_event(st, WK_HTTP_EVENT_REFUSED, WK_HTTP_STAT_REFUSED_STREAM);
}

static __always_inline int watch_urgent(struct bpf_sock_ops *skops)
{
	struct wk_http_sock *st;
	struct tcp_sock *tp;
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return 1;
	st = bpf_sk_storage_get(&wk_http_sock, sk, NULL, 0);
	if (!st || (st->flags & (SOCK_ARMED | SOCK_REFUSED)) != SOCK_ARMED)
		return 1;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp && urgent_pending(tp))
		refuse_urgent(st);
	return 1;
}

SEC("?sockops")
int wk_http_sockops(struct bpf_sock_ops *skops)
{
	struct wk_http_dest_key remote = {};
	struct wk_http_config *cfg;
	struct wk_http_sock *st;
	struct tcp_sock *tp;
	struct bpf_sock *sk;
	__u32 zero = 0;
	__u64 cookie;

	if (skops->op == BPF_SOCK_OPS_HDR_OPT_LEN_CB)
		return watch_urgent(skops);
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	st = bpf_sk_storage_get(&wk_http_sock, sk, NULL, 0);
	if (!st || !(st->flags & SOCK_BOUND))
		return 1;

	if (!sockops_addr(skops, true, remote.addr))
		return 1;
	remote.port = (__u16)bpf_ntohl(skops->remote_port);
	/*
	 * Another connect() program (the proxy redirect) may have sent the
	 * socket elsewhere: only the pinned destination gets the credential.
	 */
	if (!same_dest(&remote, &st->dest)) {
		st->flags = 0;
		return 1;
	}

	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp) {
		st->flags = 0;
		return 1;
	}
	st->mark_seq = tp->write_seq;
	st->left = 0;
	st->approved = 0;
	st->flags |= SOCK_ARMED;
	/* Without the push watch, run on every segment this socket transmits: see watch_urgent(). */
	cfg = bpf_map_lookup_elem(&wk_http_config, &zero);
	if (!cfg || !(cfg->flags & WK_HTTP_CFG_PUSH_WATCH))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
					  BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
	/*
	 * Second line behind the connect() check: with TCP Fast Open, data
	 * went out (or will, from a sendmsg that started before this point)
	 * without passing through sk_msg, so the stream position is unknown.
	 */
	if (BPF_CORE_READ_BITFIELD(tp, syn_data) ||
	    BPF_CORE_READ_BITFIELD(tp, syn_fastopen) ||
	    BPF_CORE_READ_BITFIELD(tp, fastopen_connect)) {
		st->flags |= SOCK_REFUSED;
		http_count(WK_HTTP_STAT_REFUSED_STREAM);
		http_event(st, WK_HTTP_EVENT_REFUSED, WK_HTTP_STAT_REFUSED_STREAM);
	}

	cookie = bpf_get_socket_cookie(skops);
	if (bpf_sock_hash_update(skops, &wk_http_socks, &cookie, BPF_NOEXIST)) {
		/* The connection carries no credential: requests fail upstream. */
		st->flags = 0;
		http_count(WK_HTTP_STAT_SOCKHASH_FULL);
	}
	return 1;
}

/* ---- the request head (the scanner: http-head.bpf.h) ------------------- */

/* bpf_loop context: only what must be on the stack (packet pointers). */
struct scan_ctx {
	void *data;			/* the head, linear after bpf_msg_pull_data */
	void *data_end;
	struct wk_http_sock *st;
	__u32 end;			/* head scan: bytes of the message in the window */
};

/* Steps (a byte, or a word head_word() takes) per scan_byte() call. */
#define SCAN_STEPS	4

/*
 * The head from scan.pos on, SCAN_STEPS steps: 8 bytes at once where
 * head_word() takes them, else one byte; bpf_loop callback. Returns 1 to
 * stop.
 */
static long scan_byte(__u32 i, struct scan_ctx *ctx)
{
	struct wk_http_sock *st = ctx->st;
	struct wk_http_scan *s = &st->scan;
	__u32 off, k;
	__u8 *p;

	for (int j = 0; j < SCAN_STEPS; j++) {
		off = s->pos;
		if (off >= ctx->end || off >= WK_HTTP_HEAD_MAX)
			return 1;
		/* a no-op (off < WK_HTTP_HEAD_MAX, a power of 2) the verifier needs */
		barrier_var(off);
		off &= WK_HTTP_HEAD_MAX - 1;
		p = (__u8 *)ctx->data + off;
		if ((void *)(p + 1) > ctx->data_end)
			return 1;
		if (off + 8 <= ctx->end && (void *)(p + 8) <= ctx->data_end) {
			k = head_word(s, *(__u64 *)p);
			if (k) {
				s->pos = off + k;
				continue;
			}
		}
		if (head_byte(s, st->line, st->name_len, *p))
			return 1;
	}
	return 0;
}

/* ---- a chunked body (the scanner: http-chunked.bpf.h) ------------------ */

/* One byte of chunked framing, at chunk.pos; bpf_loop callback. Returns 1 to stop. */
static long chunk_byte(__u32 i, struct scan_ctx *ctx)
{
	struct wk_http_sock *st = ctx->st;
	struct wk_http_chunk *c = &st->chunk;
	__u32 off = c->pos;
	__u8 *p;

	if (off >= c->end || off >= WK_HTTP_CHUNK_WINDOW)
		return 1;
	p = (__u8 *)ctx->data + off;
	if ((void *)(p + 1) > ctx->data_end)
		return 1;
	return chunk_step(c, st->line, st->name_len, *p);
}

/* ---- sk_msg ------------------------------------------------------------- */

/* Bytes of an injected request copied into one piece, so it leaves as one segment. */
#define WK_HTTP_COALESCE_MAX	16384

static __always_inline int refuse(struct wk_http_sock *st, __u32 why)
{
	st->flags |= SOCK_REFUSED;
	forget_line(st);
	http_count(why);
	http_event(st, WK_HTTP_EVENT_REFUSED, why);
	return SK_DROP;
}

/* Approve the next chunk of `left` safe bytes; see queue_room() (http-sendq.bpf.h). */
static __always_inline int approve(struct sk_msg_md *msg, struct wk_http_sock *st,
				   struct tcp_sock *tp)
{
	__u64 left = st->left, room = queue_room(tp), n;
	__u32 size = msg->size;

	n = left < size ? left : size;
	if (n > room)
		n = room;
	if (!n)
		n = 1;
	st->approved = (__u32)n;
	/*
	 * Body data only (no framing byte left in `left`): if its push fails,
	 * the writer's retry passes unseen in its place, but a body byte's
	 * value never moves a request boundary, and the count is the
	 * approval's. Such a failure (a non-blocking writer's EAGAIN) is then
	 * no reason to refuse; the watches refuse any other.
	 */
	if (st->framing)
		st->flags &= ~SOCK_OPAQUE;
	else
		st->flags |= SOCK_OPAQUE;
	bpf_msg_apply_bytes(msg, (__u32)n);
	return SK_PASS;
}

/*
 * What a request is judged against before anything is injected: an agent
 * is running and keeps this program's heartbeat fresh (see "Without an
 * agent" above; a stopping agent, or the next one, sets it to 0), and the
 * binding this connection was made under still holds. Returns the
 * refusal reason, or 0 with *flags (wk_http_config's, read with the
 * epoch), *dest_flags (the destination's wk_http_dest_val.flags) and
 * *now (bpf_ktime_get_ns()) set.
 */
static __always_inline __u32 request_holds(struct wk_http_sock *st, __u32 *flags,
					   __u32 *dest_flags, __u64 *now)
{
	struct wk_http_dest_val *dest;
	struct wk_http_config *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&wk_http_config, &zero);
	*now = bpf_ktime_get_ns();
	if (!cfg || *now >= cfg->alive_until)
		return WK_HTTP_STAT_REFUSED_AGENT;
	if (cfg->epoch != st->epoch)
		return WK_HTTP_STAT_REFUSED_BINDING;
	*flags = cfg->flags;
	/* Still pinned, to the same service? */
	dest = bpf_map_lookup_elem(&wk_http_dest, &st->dest);
	if (!dest || dest->service_id != st->service_id)
		return WK_HTTP_STAT_REFUSED_BINDING;
	*dest_flags = dest->flags;
	return 0;
}

/*
 * Copies the binding's header line into socket storage under the value's
 * lock (see start_request() for when): the request gets the old line or
 * the new one, never a mix, however the controller rotates it meanwhile.
 */
static __always_inline bool snapshot_header(struct wk_http_sock *st)
{
	struct wk_http_hdr_key hk = {};
	struct wk_http_hdr *hdr;
	__u64 *dst, *src;

	hk.workload_id = st->workload_id;
	hk.service_id = st->service_id;
	hdr = bpf_map_lookup_elem(&wk_http_hdr, &hk);
	if (!hdr)
		return false;

	dst = (__u64 *)st->line;
	src = (__u64 *)hdr->line;
	bpf_spin_lock(&hdr->lock);
	/* Made under other selectors: never this binding's again, nor its line. */
	if (hdr->selection != st->selection) {
		bpf_spin_unlock(&hdr->lock);
		st->hdr_state = WK_HTTP_UNBOUND;
		return false;
	}
	st->hdr_state = hdr->state;
	/*
	 * The controller bumps the version with every write of the value (a
	 * wipe keeps it but is never WK_HTTP_INJECT), and a socket's copy is
	 * only ever wiped on the way to never injecting again: the copy of
	 * the version it holds is still this line, byte for byte.
	 */
	if (st->version != hdr->version) {
		st->hdr_len = hdr->len;
		st->name_len = hdr->name_len;
		st->version = hdr->version;
		for (int i = 0; i < WK_HTTP_LINE_MAX / 8; i++)
			dst[i] = src[i];
	}
	bpf_spin_unlock(&hdr->lock);

	return st->hdr_state == WK_HTTP_INJECT &&
	       st->name_len > 0 && st->hdr_len > st->name_len + 3 &&
	       st->hdr_len <= WK_HTTP_LINE_MAX;
}

/*
 * An authority names one of the service's hosts: its form and port
 * (authority_form_ok()), then (service, host) in wk_http_host.
 */
static __always_inline bool authority_ok(struct wk_http_sock *st, struct wk_http_authority *a)
{
	if (!authority_form_ok(a, st->dest.port))
		return false;
	a->key.service_id = st->service_id;
	return bpf_map_lookup_elem(&wk_http_host, &a->key) != NULL;
}

/*
 * For a service that lists hosts, the request must name one of them
 * wherever a front could route by it: a Host line (required, once) and an
 * absolute-form target's authority ("http://" only). Returns the refusal
 * reason, or 0. (Two Host lines are refused while scanning, listed or not.)
 */
static __always_inline __u32 host_check(struct wk_http_sock *st, struct wk_http_scan *s,
				       __u32 dest_flags)
{
	if (!(dest_flags & WK_HTTP_DEST_CHECK_HOST))
		return 0;
	if (!s->seen_host || !authority_ok(st, &s->host))
		return WK_HTTP_STAT_REFUSED_HOST;
	if (s->target_form == TF_ORIGIN)
		return 0;
	if ((s->target_form != TF_AUTHORITY && s->target_form != TF_PATH) ||
	    !authority_ok(st, &s->target))
		return WK_HTTP_STAT_REFUSED_HOST;
	return 0;
}

static __always_inline void scan_reset(struct wk_http_scan *s, __u32 seq)
{
	__builtin_memset(s, 0, sizeof(*s));
	s->seq = seq;
	s->active = 1;
}

/* bpf_loop context of copy_words(): one run of bytes, copied 8 at a time */
struct copy_ctx {
	void *data;			/* the message, for COPY_SAVE its old first piece */
	void *data_end;
	struct wk_http_sock *st;
	__u32 mode;			/* COPY_* */
	__u32 src;			/* where the run starts in its source */
	__u32 dst;			/* and in its destination */
	__u32 len;			/* bytes: at least 8, or the run starts 8 bytes in */
	__u32 failed;
};

#define COPY_SAVE	0	/* message -> st->buf */
#define COPY_BUF	1	/* st->buf -> message */
#define COPY_LINE	2	/* st->line -> message */
#define COPY_WORDS	8	/* 8-byte words per copy_words() call */

/*
 * COPY_WORDS words of a run: whole words from its start; the last word is
 * the one that ends where the run ends, so it may overlap the word before
 * it or, in a run shorter than 8 bytes, the 8 - len bytes before the run
 * (in the source and in the destination alike). bpf_loop callback: returns
 * 1 when the run is done or failed (c->failed).
 */
static long copy_words(__u32 i, struct copy_ctx *c)
{
	for (int j = 0; j < COPY_WORDS; j++) {
		__u32 o = (i * COPY_WORDS + j) * 8, s, d;
		bool last = o + 8 >= c->len;
		__u64 w;
		__u8 *p;

		if (o + 8 > c->len)
			o = c->len - 8;		/* wraps below 0 for a short run: see above */
		s = c->src + o;
		d = c->dst + o;
		if (c->mode == COPY_SAVE) {
			d &= WK_HTTP_REBUILD_MAX - 1;
			if (d > WK_HTTP_REBUILD_MAX - 8)
				goto fail;
			p = (__u8 *)c->data + (s & (WK_HTTP_REBUILD_MAX - 1));
			if ((void *)(p + 8) > c->data_end)
				goto fail;
			*(__u64 *)(c->st->buf + d) = *(__u64 *)p;
		} else {
			if (c->mode == COPY_BUF) {
				s &= WK_HTTP_REBUILD_MAX - 1;
				if (s > WK_HTTP_REBUILD_MAX - 8)
					goto fail;
				w = *(__u64 *)(c->st->buf + s);
			} else {
				s &= WK_HTTP_LINE_MAX - 1;
				if (s > WK_HTTP_LINE_MAX - 8)
					goto fail;
				w = *(__u64 *)(c->st->line + s);
			}
			p = (__u8 *)c->data + (d & (2 * WK_HTTP_REBUILD_MAX - 1));
			if ((void *)(p + 8) > c->data_end)
				goto fail;
			*(__u64 *)p = w;
		}
		if (last)
			return 1;
	}
	return 0;
fail:
	c->failed = 1;
	return 1;
}

static __always_inline int copy_run(struct copy_ctx *c, __u32 mode, __u32 src, __u32 dst,
				    __u32 len)
{
	c->mode = mode;
	c->src = src;
	c->dst = dst;
	c->len = len;
	c->failed = 0;
	bpf_loop((len + 8 * COPY_WORDS - 1) / (8 * COPY_WORDS), copy_words, c, 0);
	return c->failed ? -1 : 0;
}

#define REBUILD_SKIPPED	1	/* not a request rebuild() takes: nothing changed */
#define REBUILD_DONE	0
#define REBUILD_FAILED	-1	/* the message holds unwritten bytes: drop it whole */

/*
 * The line into a small request, with one page allocation: a new piece of
 * `total` bytes is pushed in front of the message, the request is written
 * into it with the line after the request line, and the old bytes, now
 * behind it, are popped. bpf_msg_push_data in the middle of the request,
 * the other way, leaves it in three pieces that need a second allocation
 * and a copy to leave as one segment (see start_request()).
 *
 * Taken only when the message is this request and nothing more (`total`
 * is size + hlen: every byte passes now), at most WK_HTTP_REBUILD_MAX
 * bytes: then the old bytes are one piece (the head's bpf_msg_pull_data
 * made them so) and the pop takes all of it. The bytes are read into
 * socket storage first (the push leaves msg->data on the new piece only),
 * under the socket lock like every run. A kernel that refuses a pop up to
 * the end of the message (before the late-2024 fix, "pop the entire
 * sk_msg") is left one byte short, the new piece's last byte in the old
 * piece, and the two are copied into one as the other path does; the
 * socket then takes the other path.
 */
static __noinline int rebuild(struct sk_msg_md *msg, struct wk_http_sock *st,
			      __u32 off, __u32 hlen, __u32 total)
{
	struct copy_ctx c = {};
	__u32 size = msg->size;

	if ((st->flags & SOCK_NO_REBUILD) || total != size + hlen || size > WK_HTTP_REBUILD_MAX ||
	    off < 8 || off >= size || hlen < 8 || hlen > WK_HTTP_LINE_MAX)
		return REBUILD_SKIPPED;
	c.st = st;
	c.data = (void *)(long)msg->data;
	c.data_end = (void *)(long)msg->data_end;
	if (copy_run(&c, COPY_SAVE, 0, 0, size))
		return REBUILD_SKIPPED;
	if (bpf_msg_push_data(msg, 0, total, 0))
		return REBUILD_SKIPPED;
	c.data = (void *)(long)msg->data;
	c.data_end = (void *)(long)msg->data_end;
	/*
	 * In this order, each run's last word may reach back into the run
	 * written before it, never into one written after: the rest of the
	 * head (at least its closing CRLF) after the line, then the line,
	 * then the request line.
	 */
	if (copy_run(&c, COPY_BUF, off, off + hlen, size - off) ||
	    copy_run(&c, COPY_LINE, 0, off, hlen) ||
	    copy_run(&c, COPY_BUF, 0, 0, off))
		return REBUILD_FAILED;
	if (bpf_msg_pop_data(msg, total, size, 0)) {
		if (bpf_msg_pop_data(msg, total - 1, size, 0))
			return REBUILD_FAILED;
		st->flags |= SOCK_NO_REBUILD;
		/* Without memory for the copy, the request leaves in two pieces. */
		bpf_msg_pull_data(msg, 0, total, 0);
	}
	return REBUILD_DONE;
}

static __always_inline int start_request(struct sk_msg_md *msg, struct wk_http_sock *st,
					 struct tcp_sock *tp, __u32 now)
{
	struct wk_http_scan *s = &st->scan;
	struct scan_ctx ctx = {};
	__u32 size = msg->size, n, hlen, off, at, total, cfg_flags = 0, dest_flags = 0, why, version;
	struct wk_http_usage_key uk = {};
	__u64 room, ktime = 0;
	__u8 *data, *end;
	bool resumed;
	int rebuilt;

	why = request_holds(st, &cfg_flags, &dest_flags, &ktime);
	if (why)
		return refuse(st, why);
	/*
	 * A corked head comes back whole, from its first byte, with nothing
	 * queued meanwhile (a cork the kernel cannot keep is a drop, and a
	 * drop is final): carry on from where the scan stopped. Anything
	 * else is a new head. Either way the binding's line is read again:
	 * a head held back across a rotation, a withholding or an unbinding
	 * (for as long as the workload likes) is judged by the line as it is
	 * when the head completes. A new version restarts the scan, which
	 * looked for the old line's name among the head's.
	 */
	resumed = s->active && s->seq == now && s->pos <= size;
	version = st->version;
	if (!snapshot_header(st))
		return refuse(st, st->hdr_state == WK_HTTP_WITHHOLD ? WK_HTTP_STAT_REFUSED_CREDENTIAL
								  : WK_HTTP_STAT_REFUSED_BINDING);
	if (!resumed || st->version != version)
		scan_reset(s, now);

	n = size < WK_HTTP_HEAD_MAX ? size : WK_HTTP_HEAD_MAX;
	if (bpf_msg_pull_data(msg, 0, n, 0))
		return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
	ctx.data = (void *)(long)msg->data;
	ctx.data_end = (void *)(long)msg->data_end;
	ctx.st = st;
	ctx.end = n;
	if (s->pos < n)
		bpf_loop(n - s->pos, scan_byte, &ctx, 0);

	if (s->reason)
		return refuse(st, s->reason);
	if (!s->head_end) {
		if (size >= WK_HTTP_HEAD_MAX)
			return refuse(st, WK_HTTP_STAT_REFUSED_HEAD_SIZE);
		/*
		 * Hold the bytes until at least one more arrives, then look at
		 * the head again. The verdict given with a cork only applies
		 * if the kernel cannot cork (its message ring is full): then
		 * the bytes are dropped, never sent uninjected.
		 */
		bpf_msg_cork_bytes(msg, size + 1);
		http_count(WK_HTTP_STAT_CORKED);
		return SK_DROP;
	}
	s->active = 0;
	why = host_check(st, s, dest_flags);
	if (why)
		return refuse(st, why);

	hlen = st->hdr_len;
	off = s->rl_end;
	if (hlen > WK_HTTP_LINE_MAX || off >= WK_HTTP_HEAD_MAX)
		return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
	/*
	 * The request line and the injected line go in one chunk that must
	 * not fail part way (see queue_room()). With the send buffer that full,
	 * the request is refused rather than risked. Clients that wait for a
	 * response before the next request never get here; a client that
	 * pipelines behind a large body can.
	 */
	room = queue_room(tp);
	if (room < off + hlen)
		return refuse(st, WK_HTTP_STAT_REFUSED_BUSY);
	/* What this run passes: the line, and this request's bytes that fit. */
	total = size + hlen;
	if (total > (__u64)s->head_end + hlen + s->clen)
		total = s->head_end + hlen + s->clen;
	if (total > room)
		total = room;
	rebuilt = rebuild(msg, st, off, hlen, total);
	if (rebuilt == REBUILD_DONE)
		goto injected;
	if (rebuilt != REBUILD_SKIPPED)
		return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
	if (bpf_msg_push_data(msg, off, hlen, 0))
		return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
	/* From here the message holds uninitialised bytes: any failure
	 * must drop it whole. */
	/*
	 * A request that rebuild() did not take: the line is pushed where it
	 * goes. The push left the request in three pieces (up to the line, the line,
	 * the rest), and the kernel sends each piece with a tcp_sendmsg of its
	 * own: three segments where the workload wrote one, and an upstream
	 * woken three times. One contiguous piece goes out as one segment, so
	 * what this run passes (up to WK_HTTP_COALESCE_MAX bytes, the line
	 * always among them: total >= off + hlen) is copied into one piece
	 * first and the line written into that. Without memory for the copy,
	 * the line goes into its own piece, and the request leaves in three.
	 */
	at = off;
	if (bpf_msg_pull_data(msg, 0, total < WK_HTTP_COALESCE_MAX ? total : WK_HTTP_COALESCE_MAX, 0)) {
		if (bpf_msg_pull_data(msg, off, off + hlen, 0))
			return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
		at = 0;
	}
	/*
	 * A no-op (off was checked above) the verifier needs: without it the
	 * compiler drops the check, and a verifier that does not track a
	 * 32-bit spill (6.1) no longer knows the bound of `off` here.
	 */
	barrier_var(at);
	if (at >= WK_HTTP_HEAD_MAX)
		return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
	data = (__u8 *)(long)msg->data + at;
	end = (__u8 *)(long)msg->data_end;
	/* 8 bytes a store, then the rest a byte at a time */
	for (int i = 0; i < WK_HTTP_LINE_MAX / 8; i++) {
		if (i * 8 + 8 > hlen)
			break;
		if (data + i * 8 + 8 > end)
			return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
		*(__u64 *)(data + i * 8) = *(__u64 *)(st->line + i * 8);
	}
	for (int j = 0; j < 8; j++) {
		__u32 i = ((hlen & ~7) + j) & (WK_HTTP_LINE_MAX - 1);

		if ((hlen & ~7) + j >= hlen)
			break;
		if (data + i + 1 > end)
			return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
		data[i] = st->line[i];
	}
injected:
	http_count(WK_HTTP_STAT_INJECTED);
	uk.workload_id = st->workload_id;
	uk.service_id = st->service_id;
	uk.version = st->version;
	uk.epoch = st->epoch;
	count_usage(&uk, ktime);
	/*
	 * Once per connection and header version (its first request and the
	 * first after each rotation), or (WK_HTTP_CFG_AUDIT_REQUESTS) per
	 * request.
	 */
	if ((cfg_flags & WK_HTTP_CFG_AUDIT_REQUESTS) || st->audited_version != st->version) {
		http_event(st, WK_HTTP_EVENT_INJECTED, WK_HTTP_STAT_INJECTED);
		st->audited_version = st->version;
	}

	/*
	 * Head, line and a Content-Length body are now this request's safe
	 * bytes. A chunked body is followed from where the head ends.
	 */
	st->left = (__u64)s->head_end + hlen + s->clen;
	st->framing = s->head_end + hlen;
	st->flags &= ~SOCK_OPAQUE;
	st->mark_seq = now;
	if (s->seen_te) {
		__builtin_memset(&st->chunk, 0, sizeof(st->chunk));
		st->flags |= SOCK_CHUNKED;
	}
	/*
	 * A WebSocket upgrade (see upgrade_ok()): the line is in this request
	 * and in no later byte of the connection, whatever the upstream
	 * answers. Its copy goes now; once the request's bytes are passed,
	 * the connection is pass-through (wk_http_msg).
	 */
	if (s->websocket) {
		st->flags |= SOCK_UPGRADED;
		forget_line(st);
		http_count(WK_HTTP_STAT_PASSTHROUGH);
	}
	st->approved = total;
	bpf_msg_apply_bytes(msg, total);
	return SK_PASS;
}

/*
 * In a chunked body, where the last accounted byte left the framing scan
 * (left == 0): scan the framing at the start of this message, step over
 * the data it announces, and account for exactly what was scanned or
 * stepped over. Nothing is inserted or held back, so nothing is corked:
 * a size line, a CRLF or a trailer split across writes is carried on
 * from socket storage on the next one.
 */
static __always_inline int follow_chunks(struct sk_msg_md *msg, struct wk_http_sock *st,
					 struct tcp_sock *tp)
{
	struct wk_http_chunk *c = &st->chunk;
	struct scan_ctx ctx = {};
	__u32 n = msg->size;

	if (n > WK_HTTP_CHUNK_WINDOW)
		n = WK_HTTP_CHUNK_WINDOW;
	if (bpf_msg_pull_data(msg, 0, n, 0))
		return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
	ctx.data = (void *)(long)msg->data;
	ctx.data_end = (void *)(long)msg->data_end;
	ctx.st = st;
	c->pos = 0;
	c->end = n;
	c->pending = 0;
	bpf_loop(n, chunk_byte, &ctx, 0);

	if (c->reason)
		return refuse(st, c->reason);
	/* The trailer section ended: the next byte starts a request. */
	if (c->state == CS_DONE)
		st->flags &= ~SOCK_CHUNKED;
	st->left = (__u64)c->pos + c->pending;
	/* What was scanned (framing, and data inside the window) decides framing; `pending` is data past it. */
	st->framing = c->pos;
	if (!st->left)
		return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
	return approve(msg, st, tp);
}

SEC("?sk_msg")
int wk_http_msg(struct sk_msg_md *msg)
{
	struct wk_http_sock *st;
	struct tcp_sock *tp;
	struct bpf_sock *sk;
	__u32 now, consumed;

	/*
	 * The kernel keeps both in the message between runs: set them every
	 * time, or a stale cork or apply from an earlier run would apply.
	 */
	bpf_msg_cork_bytes(msg, 0);
	bpf_msg_apply_bytes(msg, 0);

	sk = msg->sk;
	if (!sk)
		return SK_DROP;
	st = bpf_sk_storage_get(&wk_http_sock, sk, NULL, 0);
	if (!st) {
		http_count(WK_HTTP_STAT_REFUSED_INTERNAL);
		return SK_DROP;
	}
	if (st->flags & SOCK_REFUSED) {
		http_count(WK_HTTP_STAT_DROPPED);
		return SK_DROP;
	}
	/* Past an injected WebSocket upgrade: not HTTP any more, nothing to inject. */
	if (st->flags & SOCK_TUNNEL)
		return SK_PASS;
	if (!(st->flags & SOCK_ARMED))
		return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return refuse(st, WK_HTTP_STAT_REFUSED_INTERNAL);

	/* Urgent data not yet acknowledged: see watch_urgent(). */
	if (urgent_pending(tp))
		return refuse(st, WK_HTTP_STAT_REFUSED_STREAM);
	/*
	 * Every byte queued since the last run must be one approved by it:
	 * more means a push failed part way and the writer's retry went out
	 * under the stale verdict, unseen (see approve()).
	 */
	now = tp->write_seq;
	consumed = now - st->mark_seq;
	if (consumed > st->approved || consumed > st->left)
		return refuse(st, WK_HTTP_STAT_REFUSED_STREAM);
	st->left -= consumed;
	st->framing = consumed < st->framing ? st->framing - consumed : 0;
	st->mark_seq = now;
	st->approved = 0;

	if (st->left)
		return approve(msg, st, tp);
	if (st->flags & SOCK_UPGRADED) {
		/*
		 * The upgrade request is all passed. From here no byte can
		 * carry or move the line: a failed push is no reason to
		 * refuse (SOCK_OPAQUE), and the frames are never parsed.
		 */
		st->flags |= SOCK_TUNNEL | SOCK_OPAQUE;
		return SK_PASS;
	}
	if (st->flags & SOCK_CHUNKED)
		return follow_chunks(msg, st, tp);
	return start_request(msg, st, tp, now);
}

/* ---- a failed push ----------------------------------------------------- */

/*
 * What both watches do when a push failed, or may fail, under the socket
 * lock: refuse a kernel-path connection from here on, unless the approval
 * held body data only, whose failure cannot reframe anything (see
 * approve()).
 */
static __always_inline void push_failed(struct sock *sk)
{
	struct wk_http_sock *st = bpf_sk_storage_get(&wk_http_sock, sk, NULL, 0);

	if (st && (st->flags & (SOCK_ARMED | SOCK_REFUSED | SOCK_OPAQUE)) == SOCK_ARMED)
		refuse(st, WK_HTTP_STAT_REFUSED_PUSH);
}

/*
 * After every tcp_bpf_push (the kernel queueing what wk_http_msg passed),
 * under the socket lock:
 *   - a push that failed leaves the kernel's verdict and approved length
 *     in place for the writer's next bytes, which would pass without
 *     wk_http_msg (see approve());
 *   - a push with MSG_OOB (the writer's own flags, passed through) may
 *     have sent urgent data (see watch_urgent()).
 * Either way the connection is refused from here: no write after this one
 * is ever looked at again, so none is injected. Needs tcp_bpf_push in the
 * kernel's BTF (a function, not inlined).
 */
#define WK_MSG_OOB	1	/* MSG_OOB in include/linux/socket.h */

SEC("?fexit/tcp_bpf_push")
int BPF_PROG(wk_http_push_done, struct sock *sk, struct sk_msg *msg, u32 apply_bytes,
	     int flags, bool uncharge, int ret)
{
	struct wk_http_sock *st;

	if (flags & WK_MSG_OOB) {
		st = bpf_sk_storage_get(&wk_http_sock, sk, NULL, 0);
		if (st)
			refuse_urgent(st);
	}
	if (ret < 0)
		push_failed(sk);
	return 0;
}

/*
 * Socket memory accounting refused a send charge (the global TCP limit, or
 * the socket's memory cgroup), under the socket lock, before the push that
 * needed it can fail: the tracepoint fires on the failure path of
 * __sk_mem_raise_allocated. Refusing the connection here covers the common
 * cause of a failed push with a tracepoint every kernel this datapath runs
 * on has, where wk_http_push_done (fexit) cannot load. A charge refused
 * while the write then goes on anyway (a blocking writer that waits until
 * memory frees up) also refuses the connection: safe, and rare.
 */
#define WK_SK_MEM_SEND 0	/* SK_MEM_SEND in include/net/sock.h */

SEC("?tp_btf/sock_exceed_buf_limit")
int BPF_PROG(wk_http_mem_refused, struct sock *sk, struct proto *prot, long allocated, int kind)
{
	if (kind == WK_SK_MEM_SEND)
		push_failed(sk);
	return 0;
}

char LICENSE[] SEC("license") __weak = "GPL";
