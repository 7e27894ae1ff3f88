// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * The floor of the kernel datapath, for bench/wire.ts: a sockops program
 * that puts each TCP socket its cgroup connects into a sockhash, and an
 * sk_msg program on that sockhash that lets every message through
 * unchanged. What the kernel datapath costs beyond this is wirekey's own
 * work (parsing, injecting, auditing); this much is the price of running
 * any sk_msg program on the send path.
 *
 * The only work besides SK_PASS is one atomic count of the messages
 * seen, so that the bench can check the program was on the path it
 * measured.
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

SEC("sockops")
int pt_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	bpf_sock_hash_update(skops, &pt_socks, &cookie, BPF_ANY);
	return 1;
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
