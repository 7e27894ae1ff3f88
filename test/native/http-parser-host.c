// SPDX-License-Identifier: GPL-2.0-only
/*
 * The kernel HTTP datapath's scanners (bpf/http-head.bpf.h,
 * bpf/http-chunked.bpf.h), compiled for the host, behind a driver that
 * follows a byte stream the way wk_http_msg does: `left` bytes of a request
 * pass untouched, a head is scanned (and held back until complete), a
 * chunked body's framing is scanned a window at a time. The unit tests
 * (test/unit/http-parser-host.test.ts) run it without root or BPF.
 *
 * What the driver leaves out is what needs a kernel: the send-queue room
 * (taken as unlimited), the binding, agent and Host-list checks (maps), and
 * the injection itself (recorded as an offset); a service's list of hosts
 * is given with the case instead of read from wk_http_host. What it
 * mirrors, it mirrors from bpf/http-inject.bpf.c's start_request(),
 * host_check() and follow_chunks(); keep them in step.
 *
 * Protocol, one case a line, on stdin:
 *   LINE [hosts=HOSTS port=N] WRITE...
 *                        each field hex but port; LINE is the injected
 *                        header line ("Name: value\r\n"), HOSTS the
 *                        service's hosts, comma-separated (the service
 *                        lists hosts: WK_HTTP_DEST_CHECK_HOST), N the
 *                        destination port, each WRITE one sendmsg
 * and one JSON object a line on stdout:
 *   {"heads":[[rlEnd,headEnd],...],   stream offsets of injected requests
 *    "passed":N,                      stream bytes let through
 *    "reason":R,                      WK_HTTP_STAT_REFUSED_* or 0
 *    "held":N,                        bytes held back (an incomplete head)
 *    "chunked":B,                     in a chunked body at the end
 *    "passThrough":B,                 a WebSocket upgrade was injected: the rest passes
 *    "scan":{...}}                    the last head scan's state ("raw":
 *                                     all of struct wk_http_scan, hex)
 * With the argument --bytes, the head is scanned a byte at a time only
 * (head_byte(), never head_word()), for the tests that check the two
 * agree.
 */
#include <linux/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The BPF-isms the scanners use. */
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#include "wirekey.h"
#include "http-head.bpf.h"
#include "http-chunked.bpf.h"

#define MAX_HEADS 4096

/* --bytes: the head a byte at a time only */
static bool bytes_only;

struct driver {
	__u8 line[WK_HTTP_LINE_MAX];
	__u32 name_len;
	int check_host;			/* the service lists hosts */
	char hosts[4096];		/* its hosts, comma-separated */
	__u32 port;			/* the destination port */
	__u64 left;			/* stream bytes of the current request still to pass */
	int chunked;
	int upgraded;			/* a WebSocket upgrade was injected: the rest passes unparsed */
	__u32 reason;
	__u64 passed;			/* stream bytes passed */
	struct wk_http_scan scan;
	struct wk_http_chunk chunk;
	__u64 heads[MAX_HEADS][2];
	__u32 nheads;
	/* the message: bytes written and neither passed nor dropped */
	__u8 *msg;
	size_t size, cap;
};

static void take(struct driver *d, size_t n)
{
	memmove(d->msg, d->msg + n, d->size - n);
	d->size -= n;
	d->passed += n;
}

static void refuse(struct driver *d, __u32 why)
{
	d->reason = why;
	d->size = 0;
}

/* authority_ok(): the form, then the service's list for wk_http_host. */
static bool authority_ok(const struct driver *d, struct wk_http_authority *a)
{
	const char *h = d->hosts;

	if (!authority_form_ok(a, d->port))
		return false;
	while (*h) {
		size_t n = strcspn(h, ",");

		if (n == a->key.len && !memcmp(h, a->key.name, n))
			return true;
		h += n + (h[n] == ',');
	}
	return false;
}

/* host_check() */
static __u32 host_check(const struct driver *d, struct wk_http_scan *s)
{
	if (!d->check_host)
		return 0;
	if (!s->seen_host || !authority_ok(d, &s->host))
		return WK_HTTP_STAT_REFUSED_HOST;
	if (s->target_form == TF_ORIGIN)
		return 0;
	if ((s->target_form != TF_AUTHORITY && s->target_form != TF_PATH) ||
	    !authority_ok(d, &s->target))
		return WK_HTTP_STAT_REFUSED_HOST;
	return 0;
}

/* start_request(): scan a head from the message's start, or hold it. */
static int start_request(struct driver *d)
{
	struct wk_http_scan *s = &d->scan;
	__u32 size = d->size > 0xffffffffu ? 0xffffffffu : (__u32)d->size, n, why;

	/* A held head comes back whole, with more bytes: carry on. */
	if (!s->active || s->pos > size) {
		memset(s, 0, sizeof(*s));
		s->active = 1;
	}
	n = size < WK_HTTP_HEAD_MAX ? size : WK_HTTP_HEAD_MAX;
	while (s->pos < n && s->pos < WK_HTTP_HEAD_MAX) {
		if (!bytes_only && s->pos + 8 <= n) {
			__u64 w;
			__u32 k;

			memcpy(&w, d->msg + s->pos, sizeof(w));
			k = head_word(s, w);
			if (k) {
				s->pos += k;
				continue;
			}
		}
		if (head_byte(s, d->line, d->name_len, d->msg[s->pos]))
			break;
	}
	if (s->reason) {
		refuse(d, s->reason);
		return 0;
	}
	if (!s->head_end) {
		if (size >= WK_HTTP_HEAD_MAX)
			refuse(d, WK_HTTP_STAT_REFUSED_HEAD_SIZE);
		return 0;	/* held until more is written */
	}
	s->active = 0;
	why = host_check(d, s);
	if (why) {
		refuse(d, why);
		return 0;
	}
	if (d->nheads < MAX_HEADS) {
		d->heads[d->nheads][0] = d->passed + s->rl_end;
		d->heads[d->nheads][1] = d->passed + s->head_end;
		d->nheads++;
	}
	d->left = (__u64)s->head_end + s->clen;
	if (s->websocket)
		d->upgraded = 1;
	if (s->seen_te) {
		memset(&d->chunk, 0, sizeof(d->chunk));
		d->chunked = 1;
	}
	return 1;
}

/* follow_chunks(): scan one window of framing, account for it. */
static int follow_chunks(struct driver *d)
{
	struct wk_http_chunk *c = &d->chunk;
	__u32 n = d->size < WK_HTTP_CHUNK_WINDOW ? (__u32)d->size : WK_HTTP_CHUNK_WINDOW;

	c->pos = 0;
	c->end = n;
	c->pending = 0;
	while (c->pos < c->end && c->pos < WK_HTTP_CHUNK_WINDOW)
		if (chunk_step(c, d->line, d->name_len, d->msg[c->pos]))
			break;
	if (c->reason) {
		refuse(d, c->reason);
		return 0;
	}
	if (c->state == CS_DONE)
		d->chunked = 0;
	d->left = (__u64)c->pos + c->pending;
	if (!d->left) {
		refuse(d, WK_HTTP_STAT_REFUSED_INTERNAL);
		return 0;
	}
	return 1;
}

/* One sendmsg: wk_http_msg runs until the message is passed, held or dropped. */
static void write_bytes(struct driver *d, const __u8 *p, size_t n)
{
	if (d->reason)
		return;
	if (d->size + n > d->cap) {
		d->cap = (d->size + n) * 2;
		d->msg = realloc(d->msg, d->cap);
		if (!d->msg)
			abort();
	}
	memcpy(d->msg + d->size, p, n);
	d->size += n;
	while (d->size && !d->reason) {
		if (d->left) {
			size_t k = d->left < d->size ? d->left : d->size;

			d->left -= k;
			take(d, k);
		} else if (d->upgraded) {
			/* wk_http_msg's SOCK_TUNNEL: every later byte passes, nothing is scanned */
			take(d, d->size);
		} else if (d->chunked ? !follow_chunks(d) : !start_request(d)) {
			break;
		}
	}
}

static int unhex(const char *s, size_t len, __u8 *out)
{
	for (size_t i = 0; i + 1 < len; i += 2) {
		unsigned v;

		if (sscanf(s + i, "%2x", &v) != 1)
			return -1;
		out[i / 2] = (__u8)v;
	}
	return (int)(len / 2);
}

static void json_bytes(const char *key, const __u8 *p, size_t n)
{
	printf("\"%s\":\"", key);
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '"' || p[i] == '\\' || p[i] < 0x20 || p[i] >= 0x7f)
			printf("\\u%04x", p[i]);
		else
			putchar(p[i]);
	}
	putchar('"');
}

static void json_authority(const char *key, const struct wk_http_authority *a)
{
	printf("\"%s\":{\"state\":%u,", key, a->state);
	json_bytes("name", a->key.name, a->key.len < WK_HTTP_HOST_KEY_NAME ? a->key.len : 0);
	printf(",\"port\":%u,\"digits\":%u}", a->port, a->digits);
}

static void report(const struct driver *d)
{
	const struct wk_http_scan *s = &d->scan;
	__u8 method[8];

	printf("{\"heads\":[");
	for (__u32 i = 0; i < d->nheads; i++)
		printf("%s[%llu,%llu]", i ? "," : "", (unsigned long long)d->heads[i][0],
		       (unsigned long long)d->heads[i][1]);
	printf("],\"passed\":%llu,\"reason\":%u,\"held\":%zu,\"chunked\":%s,\"passThrough\":%s,",
	       (unsigned long long)d->passed, d->reason, d->size, d->chunked ? "true" : "false",
	       d->upgraded ? "true" : "false");
	memcpy(method, &s->method, 8);	/* little-endian, as the scanner packs it */
	printf("\"scan\":{");
	json_bytes("method", method, strnlen((char *)method, 8));
	printf(",\"clen\":%llu,\"seenLength\":%u,\"seenTe\":%u,\"http10\":%u,\"seenHost\":%u,"
	       "\"targetForm\":%u,\"rlEnd\":%u,\"headEnd\":%u,",
	       (unsigned long long)s->clen, s->seen_length, s->seen_te, s->http10, s->seen_host,
	       s->target_form, s->rl_end, s->head_end);
	json_authority("host", &s->host);
	putchar(',');
	json_authority("target", &s->target);
	/* All of it, so that the word and byte scans are held to leaving it alike. */
	printf(",\"raw\":\"");
	for (size_t i = 0; i < sizeof(*s); i++)
		printf("%02x", ((const __u8 *)s)[i]);
	printf("\"}}\n");
}

int main(int argc, char **argv)
{
	char *buf = NULL;
	size_t cap = 0;
	ssize_t len;
	static struct driver d;

	bytes_only = argc > 1 && !strcmp(argv[1], "--bytes");
	while ((len = getline(&buf, &cap, stdin)) > 0) {
		char *save = NULL, *f;
		__u8 *bytes;
		int n, first = 1;

		memset(&d, 0, offsetof(struct driver, msg));
		d.size = 0;
		bytes = malloc(len / 2 + 1);
		if (!bytes)
			abort();
		for (f = strtok_r(buf, " \n", &save); f; f = strtok_r(NULL, " \n", &save)) {
			if (!strncmp(f, "port=", 5)) {
				d.port = (__u32)strtoul(f + 5, NULL, 10);
				continue;
			}
			if (!strncmp(f, "hosts=", 6)) {
				n = unhex(f + 6, strlen(f + 6), bytes);
				if (n < 0 || (size_t)n >= sizeof(d.hosts))
					return 2;
				memcpy(d.hosts, bytes, n);
				d.hosts[n] = 0;
				d.check_host = 1;
				continue;
			}
			n = unhex(f, strlen(f), bytes);
			if (n < 0) {
				fprintf(stderr, "http-parser-host: not hex: %s\n", f);
				return 2;
			}
			if (first) {
				if (n > WK_HTTP_LINE_MAX)
					n = WK_HTTP_LINE_MAX;
				memcpy(d.line, bytes, n);
				d.name_len = (__u32)((__u8 *)memchr(d.line, ':', n) ?
					(__u8 *)memchr(d.line, ':', n) - d.line : 0);
				first = 0;
			} else {
				write_bytes(&d, bytes, n);
			}
		}
		free(bytes);
		report(&d);
		fflush(stdout);
	}
	free(buf);
	free(d.msg);
	return 0;
}
