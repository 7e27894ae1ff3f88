// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * The floors of the kernel datapath, for bench/wire.ts. Each is a sockops
 * program that puts each TCP socket its cgroup connects into a sockhash,
 * and an sk_msg program on that sockhash:
 *
 * pt_msg lets every message through unchanged: the price of running any
 * sk_msg program on the send path.
 *
 * in_msg inserts the bench's header line after the request line of every
 * message of at most 256 bytes that starts with one, the simplest way:
 * bpf_msg_push_data after the request line (the kernel allocates a piece
 * for the new bytes and splits the message around it), then
 * bpf_msg_pull_data to reach that piece (no copy: it is one piece), then
 * the line's bytes. No head parsing, no identity, no credential lookup,
 * no audit; the request leaves in three pieces. wirekey's program instead
 * rebuilds a small request around the line in one new piece
 * (bpf/http-inject.bpf.c, rebuild()).
 *
 * The only other work is one atomic count of the messages handled, so
 * that the bench can check the program was on the path it measured.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} pt_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} pt_msgs SEC(".maps");

/* Each socket the cgroup connects goes into `socks`, whose sk_msg program then sees its messages. */
static __always_inline int add_connected(struct bpf_sock_ops *skops, void *socks)
{
	__u64 cookie;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	bpf_sock_hash_update(skops, socks, &cookie, BPF_ANY);
	return 1;
}

SEC("sockops")
int pt_sockops(struct bpf_sock_ops *skops)
{
	return add_connected(skops, &pt_socks);
}

SEC("sk_msg")
int pt_msg(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&pt_msgs, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
	return SK_PASS;
}

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} in_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} in_msgs SEC(".maps");

/* The bench's bearer (bench/wire.ts BEARER), which the upstream's log checks for. */
#define IN_LINE "Authorization: Bearer bench-token\r\n"
#define IN_LEN (sizeof(IN_LINE) - 1)
/* How far into the first piece the request line's end is looked for. */
#define IN_SCAN 256

SEC("sockops")
int in_sockops(struct bpf_sock_ops *skops)
{
	return add_connected(skops, &in_socks);
}

SEC("sk_msg")
int in_msg(struct sk_msg_md *msg)
{
	const char line[] = IN_LINE;
	__u8 *data = msg->data, *end = msg->data_end;
	__u32 zero = 0, off = 0, i;
	__u64 *n;

	/* A request that straddles two pieces of the socket's memory is put in one first, as any parser must. */
	if (msg->size <= IN_SCAN && data + msg->size > end) {
		if (bpf_msg_pull_data(msg, 0, msg->size, 0))
			return SK_PASS;
		data = msg->data;
		end = msg->data_end;
	}
	for (i = 0; i < IN_SCAN; i++) {
		if (data + i + 1 > end)
			return SK_PASS;
		if (data[i] == '\n') {
			off = i + 1;
			break;
		}
	}
	if (!off || bpf_msg_push_data(msg, off, IN_LEN, 0))
		return SK_PASS;
	/* The pushed bytes are not initialised: a message that cannot have them written does not go out. */
	if (bpf_msg_pull_data(msg, off, off + IN_LEN, 0))
		return SK_DROP;
	data = msg->data;
	end = msg->data_end;
	if (data + IN_LEN > end)
		return SK_DROP;
	__builtin_memcpy(data, line, IN_LEN);
	n = bpf_map_lookup_elem(&in_msgs, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
