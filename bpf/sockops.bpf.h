/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Addresses of a sockops program's socket in the form the maps key them
 * by: 16 bytes, network byte order, IPv4 as ::ffff:a.b.c.d.
 */
#ifndef WIREKEY_SOCKOPS_BPF_H
#define WIREKEY_SOCKOPS_BPF_H

#ifndef AF_INET
#define AF_INET		2
#define AF_INET6	10
#endif

/*
 * The socket's local (remote == false) or remote address into addr[4].
 * False for a family other than IPv4 and IPv6. Call with a constant
 * `remote`: each branch then reads fixed ctx fields.
 */
static __always_inline bool sockops_addr(struct bpf_sock_ops *skops, bool remote, __u32 addr[4])
{
	if (skops->family == AF_INET) {
		addr[0] = 0;
		addr[1] = 0;
		addr[2] = bpf_htonl(0xffff);
		addr[3] = remote ? skops->remote_ip4 : skops->local_ip4;
		/* Keep clang from merging the two ctx loads: the verifier
		 * refuses ctx accesses at a computed offset. */
		asm volatile("" ::: "memory");
		return true;
	}
	if (skops->family == AF_INET6) {
		if (remote) {
			addr[0] = skops->remote_ip6[0];
			addr[1] = skops->remote_ip6[1];
			addr[2] = skops->remote_ip6[2];
			addr[3] = skops->remote_ip6[3];
		} else {
			addr[0] = skops->local_ip6[0];
			addr[1] = skops->local_ip6[1];
			addr[2] = skops->local_ip6[2];
			addr[3] = skops->local_ip6[3];
		}
		asm volatile("" ::: "memory");
		return true;
	}
	return false;
}

#endif /* WIREKEY_SOCKOPS_BPF_H */
