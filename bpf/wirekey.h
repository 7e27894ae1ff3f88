/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The contract between wirekey's BPF programs and the controller.
 *
 * Plain C types only, so both clang -target bpf and the controller's layout
 * check (controller/datapath/layout.ts, verified against the object's BTF at
 * load time) see the same thing. Every struct has explicit padding and a
 * size assertion: a change here must be made on both sides.
 */
#ifndef WIREKEY_H
#define WIREKEY_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Map capacities; the README states them. */
#define WK_MAX_CGROUPS		4096
#define WK_MAX_BINDINGS		4096
#define WK_MAX_CONNS		65536

/* Deepest cgroup level searched for a bound ancestor. */
#define WK_MAX_CGROUP_DEPTH	32

/* wk_bind_port values: what connect() does for (workload, port). */
#define WK_ACTION_PROXY		1

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

WK_ASSERT_SIZE(wk_bind_key, 8);
WK_ASSERT_SIZE(wk_bind_val, 8);
WK_ASSERT_SIZE(wk_orig_dst, 40);
WK_ASSERT_SIZE(wk_conn_key, 20);

#endif /* WIREKEY_H */
