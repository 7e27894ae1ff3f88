/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Send-queue accounting for the kernel HTTP datapath: how many bytes
 * wk_http_msg may approve at once (approve() in http-inject.bpf.c), so
 * that the kernel never fails to queue an approval part way. Needs
 * vmlinux.h and bpf_core_read.h.
 */
#ifndef WIREKEY_HTTP_SENDQ_BPF_H
#define WIREKEY_HTTP_SENDQ_BPF_H

/*
 * Why approvals are sized the way they are. When the kernel fails to queue
 * an approved chunk part way (a non-blocking writer and a full send
 * buffer, SO_SNDTIMEO, a signal), tcp_bpf_send_verdict frees the rest of
 * the message but keeps the verdict and the whole approved length: the
 * writer's retry then passes without this program, and every further
 * failure under that stale verdict lets more bytes than approved go out
 * unseen. So a push must not fail part way:
 *   - an approval is never more than the current message, nor more than
 *     the socket can queue right now without waiting (queue_room);
 *   - the chunk holding injected bytes (request line and line) must fit
 *     whole, or the request is refused: a half-queued line, or the
 *     workload's bytes passed where the line should be, would be a
 *     corrupted request;
 *   - with no room at all, one byte is approved: a one-byte push queues
 *     that byte or nothing, so it cannot overrun either.
 * A push can fail anyway: memory pressure (global, or the socket's
 * memory cgroup: those waits are not the send buffer's), and then a
 * blocking writer's SO_SNDTIMEO or a signal. The writer's next bytes, up
 * to the approved length, then pass under the stale verdict without this
 * program, and if the push failed before its first byte, nothing in
 * write_seq would tell: the retry, with a different Content-Length, could
 * make the upstream take the next request line and its injected line for
 * a body (which an echoing upstream returns). So every failed push is
 * caught where it fails: wk_http_push_done (fexit on tcp_bpf_push, which
 * runs under the socket lock, before any other write can start) marks the
 * connection refused, and so does wk_http_mem_refused (the
 * sock_exceed_buf_limit tracepoint, also under the lock) as soon as socket
 * memory accounting refuses a send charge, before the push fails (both
 * let pass a failure of an approval that held body data only: see
 * approve()). On a
 * kernel that refuses fexit, the tracepoint alone covers memory pressure;
 * a push failing for another reason (a page allocation failure) then goes
 * unnoticed. What can still pass is the stale approval's rest:
 * at most one approved chunk of whatever the writer sends next, never
 * looked at, with nothing of the program's in it; then every write is
 * dropped. Framing is decided by what precedes a byte, so bytes after the
 * failure cannot move an injected line already queued out of the head it
 * was put in, and no line is injected after it. (A failure after some
 * bytes went out also shows in write_seq: the check in wk_http_msg stays
 * as a second line.)
 */
static __always_inline __u64 net_notsent_lowat(struct tcp_sock *tp)
{
	__u32 lowat = tp->notsent_lowat;

	if (!lowat)
		/* a BTF load through the socket, not a bpf_probe_read_kernel call */
		lowat = tp->inet_conn.icsk_inet.sk.__sk_common.skc_net.net->ipv4.sysctl_tcp_notsent_lowat;
	return lowat;
}

/*
 * Bytes the socket can queue now with tcp_sendmsg_locked never waiting: it
 * only waits when it needs a new skb while sk_wmem_queued >= sk_sndbuf or
 * the not-yet-sent bytes reach notsent_lowat. n bytes need at most
 * n / mss + 2 new skbs, each charged at most 2 KiB beyond its data.
 */
static __always_inline __u64 queue_room(struct tcp_sock *tp)
{
	__s64 room = (__s64)tp->inet_conn.icsk_inet.sk.sk_sndbuf -
		     tp->inet_conn.icsk_inet.sk.sk_wmem_queued - 2 * 2048;
	__u64 notsent = (__u32)(tp->write_seq - tp->snd_nxt);
	__u64 lowat = net_notsent_lowat(tp);
	__u64 mss = tp->mss_cache, n;

	if (room <= 0 || notsent >= lowat)
		return 0;
	if (mss < 536)
		mss = 536;
	n = (__u64)room * mss / (mss + 2048);
	if (n > lowat - notsent - 1)
		n = lowat - notsent - 1;
	return n;
}

#endif /* WIREKEY_HTTP_SENDQ_BPF_H */
