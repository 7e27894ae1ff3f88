/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The request head scanner of http-inject.bpf.c: one byte at a time
 * (head_byte()), or 8 where every one of them would take head_byte()'s
 * plainest branch (head_word()), over a struct wk_http_scan, with no BPF
 * helper, map or packet pointer in it, so that the same code also compiles
 * for the host (test/native/, where the unit tests run it and check that
 * both ways decide alike). The BPF side fetches the bytes in a bpf_loop
 * callback (scan_byte()) and decides what a finished scan means (inject,
 * cork, refuse). Needs __u8..__u64, bool and __always_inline from the
 * includer (vmlinux.h and bpf_helpers.h, or the host's headers).
 */
#ifndef WIREKEY_HTTP_HEAD_BPF_H
#define WIREKEY_HTTP_HEAD_BPF_H

#include "wirekey.h"

/*
 * One authority as it is read (a Host value, or an absolute-form target's
 * host and port): the host lower-cased into a wk_http_host key, the port
 * apart. See host_byte().
 */
struct wk_http_authority {
	struct wk_http_host_key key;
	__u32 state;			/* enum host_state */
	__u32 port;			/* the port given; 0 if none */
	__u32 digits;			/* digits of the port */
	__u32 _pad;
};

/*
 * Where the scan of a request head is. It lives in socket storage, not on
 * the stack: the verifier then treats it as data, so the bpf_loop callback
 * is verified once instead of once per combination of parser states, and a
 * corked head is not scanned again from its first byte.
 */
struct wk_http_scan {
	__u64 word[3];			/* lower-cased header name, first 24 bytes */
	__u64 method;			/* first 8 bytes of the method */
	__u64 clen;			/* Content-Length */
	__u32 seq;			/* write_seq where this head starts */
	__u32 pos;			/* bytes of the head scanned so far */
	__u32 active;			/* a head is being scanned */
	__u32 state;			/* enum scan_state */
	__u32 tok;			/* bytes of the current token */
	__u32 same_name;		/* the current name is the injected header's so far */
	__u32 kind;			/* enum hdr_kind of the current line */
	__u32 seen_length;
	__u32 cl_state;			/* 0 leading space, 1 digits, 2 trailing space */
	__u32 digits;
	__u32 upgrade;			/* bytes of "upgrade" matched in Connection */
	__u32 rl_end;			/* offset after the request line's CRLF */
	__u32 head_end;			/* offset after CRLFCRLF; 0 until found */
	__u32 reason;			/* WK_HTTP_STAT_REFUSED_*; 0 while acceptable */
	__u32 http10;			/* the request line says HTTP/1.0 */
	__u32 seen_te;			/* a Transfer-Encoding line was seen (its value: chunked) */
	__u32 te_match;			/* bytes of "chunked" matched in Transfer-Encoding */
	__u32 seen_host;		/* a Host line was seen */
	__u32 target_form;		/* enum target_form */
	__u32 target_tok;		/* bytes of "http://" matched */
	__u32 seen_upgrade;		/* an Upgrade line was seen (its value: websocket) */
	__u32 ws_match;			/* bytes of "websocket" matched in Upgrade */
	__u32 conn_upgrade;		/* Connection names "upgrade" */
	__u32 websocket;		/* the head is a WebSocket upgrade the program allows */
	__u32 _pad;
	struct wk_http_authority host;	/* the Host value */
	struct wk_http_authority target;	/* an absolute-form target's authority */
};

#define W8(a, b, c, d, e, f, g, h)					\
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 | \
	 (__u64)(e) << 32 | (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)

/* Lower-cased header names, 8 bytes a word, as scan() accumulates them. */
#define NAME_CONTENT_	W8('c', 'o', 'n', 't', 'e', 'n', 't', '-')
#define NAME_LENGTH	W8('l', 'e', 'n', 'g', 't', 'h', 0, 0)
#define NAME_TRANSFER	W8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r')
#define NAME__ENCODIN	W8('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n')
#define NAME_G		W8('g', 0, 0, 0, 0, 0, 0, 0)
#define NAME_UPGRADE	W8('u', 'p', 'g', 'r', 'a', 'd', 'e', 0)
#define NAME_CONNECTI	W8('c', 'o', 'n', 'n', 'e', 'c', 't', 'i')
#define NAME_ON		W8('o', 'n', 0, 0, 0, 0, 0, 0)
#define NAME_HOST	W8('h', 'o', 's', 't', 0, 0, 0, 0)
#define SCHEME_HTTP	W8('h', 't', 't', 'p', ':', '/', '/', 0)
#define VALUE_CHUNKED	W8('c', 'h', 'u', 'n', 'k', 'e', 'd', 0)
#define VALUE_WEBSOCKE	W8('w', 'e', 'b', 's', 'o', 'c', 'k', 'e')
#define VALUE_WEBSOCKET_LEN	9	/* "websocke" and a 't' */
#define VERSION_PREFIX	W8('H', 'T', 'T', 'P', '/', '1', '.', 0)

enum scan_state {
	HS_METHOD, HS_TARGET, HS_VERSION, HS_RL_LF,
	HS_LINE, HS_NAME, HS_VALUE, HS_LF, HS_END_LF, HS_DONE,
};

enum hdr_kind { HK_OTHER, HK_LENGTH, HK_CONNECTION, HK_TRANSFER, HK_HOST, HK_UPGRADE };

/* How the request target starts: "/" or "*", or "http://" then an authority. */
enum target_form { TF_ORIGIN, TF_SCHEME, TF_AUTHORITY, TF_PATH, TF_BAD };

/* Where host_byte() is in an authority: host [":" port], whitespace around. */
enum host_state { AS_START, AS_NAME, AS_PORT, AS_TRAIL, AS_BAD };


/* RFC 9110 tchar */
static __always_inline bool is_tchar(__u8 c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
	case '+': case '-': case '.': case '^': case '_': case '`': case '|':
	case '~':
		return true;
	}
	return false;
}

static __always_inline __u8 lower(__u8 c)
{
	return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/*
 * The methods that get the header, exactly as RFC 9110 spells them (method
 * names are case-sensitive): GET HEAD POST PUT PATCH DELETE OPTIONS. Every
 * other method is refused: TRACE and TRACK echo the request, credential
 * included, back to the workload; CONNECT turns the connection into a
 * tunnel; and an unknown method's meaning (WebDAV, extensions) is unknown
 * to this program. "connect" or "Get" are other methods, not these.
 */
#define METHOD_GET	W8('G', 'E', 'T', 0, 0, 0, 0, 0)
#define METHOD_PUT	W8('P', 'U', 'T', 0, 0, 0, 0, 0)
#define METHOD_HEAD	W8('H', 'E', 'A', 'D', 0, 0, 0, 0)
#define METHOD_POST	W8('P', 'O', 'S', 'T', 0, 0, 0, 0)
#define METHOD_PATCH	W8('P', 'A', 'T', 'C', 'H', 0, 0, 0)
#define METHOD_DELETE	W8('D', 'E', 'L', 'E', 'T', 'E', 0, 0)
#define METHOD_OPTIONS	W8('O', 'P', 'T', 'I', 'O', 'N', 'S', 0)

static __always_inline bool method_allowed(__u32 len, __u64 m)
{
	switch (len) {
	case 3:
		return m == METHOD_GET || m == METHOD_PUT;
	case 4:
		return m == METHOD_HEAD || m == METHOD_POST;
	case 5:
		return m == METHOD_PATCH;
	case 6:
		return m == METHOD_DELETE;
	case 7:
		return m == METHOD_OPTIONS;
	}
	return false;
}

/*
 * A host name as it may appear in Host or an absolute-form target, after
 * lower-casing: RFC 3986 unreserved characters. Anything else (an IPv6
 * literal, percent-encoding, userinfo, sub-delims) never matches a listed
 * host, which the policy checks to be a DNS name.
 */
static __always_inline bool host_char(__u8 c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

/* One byte (lower-cased) of an authority; see struct wk_http_authority. */
static __always_inline void host_byte(struct wk_http_authority *a, __u8 c)
{
	__u32 n = a->key.len;

	switch (a->state) {
	case AS_START:
	case AS_NAME:
		if (host_char(c)) {
			/* room for WK_HTTP_HOST_MAX and a trailing dot */
			if (n > WK_HTTP_HOST_MAX) {
				a->state = AS_BAD;
				break;
			}
			a->key.name[n & (WK_HTTP_HOST_KEY_NAME - 1)] = c;
			a->key.len = n + 1;
			a->state = AS_NAME;
		} else if (c == ' ' || c == '\t') {
			/* leading, or trailing after the name */
			if (a->state == AS_NAME)
				a->state = AS_TRAIL;
		} else if (c == ':' && a->state == AS_NAME) {
			a->state = AS_PORT;
		} else {
			a->state = AS_BAD;
		}
		break;
	case AS_PORT:
		if (c >= '0' && c <= '9' && a->digits < 5) {
			a->digits++;
			a->port = a->port * 10 + (c - '0');
		} else if ((c == ' ' || c == '\t') && a->digits) {
			a->state = AS_TRAIL;
		} else {
			a->state = AS_BAD;
		}
		break;
	case AS_TRAIL:
		if (c != ' ' && c != '\t')
			a->state = AS_BAD;
		break;
	}
}

/*
 * An authority that may name one of a service's hosts: a well-formed host,
 * its port (if given) `port`. A trailing dot is dropped from the key
 * ("api.example." is "api.example"); the caller then looks the key up.
 */
static __always_inline bool authority_form_ok(struct wk_http_authority *a, __u32 port)
{
	__u32 n = a->key.len;

	if (a->state != AS_NAME && a->state != AS_TRAIL && !(a->state == AS_PORT && a->digits))
		return false;
	if (a->digits && a->port != port)
		return false;
	if (n && a->key.name[(n - 1) & (WK_HTTP_HOST_KEY_NAME - 1)] == '.') {
		n--;
		a->key.name[n & (WK_HTTP_HOST_KEY_NAME - 1)] = 0;
		a->key.len = n;
	}
	if (!n || n > WK_HTTP_HOST_MAX)
		return false;
	return true;
}

/* One byte of the request target, for its form and, in absolute form, its authority. */
static __always_inline void target_byte(struct wk_http_scan *s, __u32 tok, __u8 lc)
{
	__u32 k = s->target_tok;

	if (!tok)
		s->target_form = (lc == '/' || lc == '*') ? TF_ORIGIN : TF_SCHEME;
	if (s->target_form == TF_SCHEME) {
		if (k < 7 && lc == (__u8)(SCHEME_HTTP >> (8 * (k & 7)))) {
			s->target_tok = k + 1;
			if (k + 1 == 7)
				s->target_form = TF_AUTHORITY;
		} else {
			/* another scheme, or not a URI */
			s->target_form = TF_BAD;
		}
	} else if (s->target_form == TF_AUTHORITY) {
		if (lc == '/' || lc == '?')
			s->target_form = TF_PATH;
		else
			host_byte(&s->target, lc);
	}
}

static __always_inline long stop(struct wk_http_scan *s, __u32 reason)
{
	s->reason = reason;
	s->state = HS_DONE;
	return 1;
}

/* The header line's name ends at ':'. Decides what the line is. */
static __always_inline long end_of_name(struct wk_http_scan *s, __u32 name_len)
{
	__u64 w0 = s->word[0], w1 = s->word[1], w2 = s->word[2];
	__u32 n = s->tok;

	if (s->same_name && n == name_len)
		return stop(s, WK_HTTP_STAT_REFUSED_HEADER);
	s->kind = HK_OTHER;
	if (n == 14 && w0 == NAME_CONTENT_ && w1 == NAME_LENGTH) {
		if (s->seen_length)
			return stop(s, WK_HTTP_STAT_REFUSED_LENGTH);
		/* Content-Length with Transfer-Encoding: which one frames the body? */
		if (s->seen_te)
			return stop(s, WK_HTTP_STAT_REFUSED_TRANSFER);
		s->seen_length = 1;
		s->kind = HK_LENGTH;
		s->cl_state = 0;
		s->digits = 0;
		s->clen = 0;
	} else if (n == 17 && w0 == NAME_TRANSFER && w1 == NAME__ENCODIN && w2 == NAME_G) {
		/*
		 * Followed: one Transfer-Encoding line, value "chunked", on
		 * HTTP/1.1, without Content-Length. A second line (a list
		 * split in two), HTTP/1.0 (no chunked there) or both framings
		 * leave the body's end to the upstream's guess: refused.
		 */
		if (s->seen_te || s->seen_length || s->http10)
			return stop(s, WK_HTTP_STAT_REFUSED_TRANSFER);
		s->seen_te = 1;
		s->kind = HK_TRANSFER;
		s->te_match = 0;
	} else if (n == 7 && w0 == NAME_UPGRADE) {
		/* One Upgrade line, whose value must be exactly "websocket" (see upgrade_ok()). */
		if (s->seen_upgrade)
			return stop(s, WK_HTTP_STAT_REFUSED_UPGRADE);
		s->seen_upgrade = 1;
		s->kind = HK_UPGRADE;
		s->ws_match = 0;
	} else if (n == 10 && w0 == NAME_CONNECTI && w1 == NAME_ON) {
		s->kind = HK_CONNECTION;
		s->upgrade = 0;
	} else if (n == 4 && w0 == NAME_HOST) {
		/* Two Host lines: which one routes the request is anyone's guess. */
		if (s->seen_host)
			return stop(s, WK_HTTP_STAT_REFUSED_HOST);
		s->seen_host = 1;
		s->kind = HK_HOST;
	}
	s->state = HS_VALUE;
	return 0;
}

static __always_inline long value_byte(struct wk_http_scan *s, __u8 c)
{
	__u8 lc = lower(c);
	__u32 k;

	if (s->kind == HK_LENGTH) {
		if (c == ' ' || c == '\t') {
			if (s->cl_state == 1)
				s->cl_state = 2;
		} else if (c >= '0' && c <= '9' && s->cl_state != 2) {
			s->cl_state = 1;
			if (++s->digits > 15)
				return stop(s, WK_HTTP_STAT_REFUSED_LENGTH);
			s->clen = s->clen * 10 + (c - '0');
		} else {
			return stop(s, WK_HTTP_STAT_REFUSED_LENGTH);
		}
	} else if (s->kind == HK_TRANSFER) {
		/* exactly "chunked", any case, with optional whitespace around */
		k = s->te_match;
		if (c == ' ' || c == '\t') {
			if (k && k < 7)
				return stop(s, WK_HTTP_STAT_REFUSED_TRANSFER);
		} else if (k < 7 && lc == (__u8)(VALUE_CHUNKED >> (8 * (k & 7)))) {
			s->te_match = k + 1;
		} else {
			/* another coding, a list, a parameter */
			return stop(s, WK_HTTP_STAT_REFUSED_TRANSFER);
		}
	} else if (s->kind == HK_HOST) {
		host_byte(&s->host, lc);
	} else if (s->kind == HK_CONNECTION) {
		/*
		 * "upgrade" has no repeated letter: a mismatch restarts at 'u'.
		 * Anywhere in the value ("uupgrade", "x-upgrade" too): the head
		 * is then an upgrade, allowed only as upgrade_ok() says.
		 */
		k = s->upgrade & 7;
		if (k < 7 && lc == (__u8)(NAME_UPGRADE >> (8 * k))) {
			if (k + 1 == 7)
				s->conn_upgrade = 1;
			s->upgrade = k + 1;
		} else {
			s->upgrade = lc == 'u';
		}
	} else if (s->kind == HK_UPGRADE) {
		/* exactly "websocket", any case, optional whitespace around: no list, no version */
		k = s->ws_match;
		if (c == ' ' || c == '\t') {
			if (k && k < VALUE_WEBSOCKET_LEN)
				return stop(s, WK_HTTP_STAT_REFUSED_UPGRADE);
		} else if (k < 8 && lc == (__u8)(VALUE_WEBSOCKE >> (8 * (k & 7)))) {
			s->ws_match = k + 1;
		} else if (k == 8 && lc == 't') {
			s->ws_match = k + 1;
		} else {
			return stop(s, WK_HTTP_STAT_REFUSED_UPGRADE);
		}
	}
	return 0;
}


/*
 * A head with an Upgrade line or a Connection naming "upgrade" is allowed
 * only as a WebSocket upgrade: GET on HTTP/1.1, one "Upgrade: websocket",
 * Connection naming upgrade, and no body (no Transfer-Encoding, no
 * Content-Length but 0). The caller injects it and then passes the rest of
 * the connection untouched (see "WebSocket" in http-inject.bpf.c).
 */
static __always_inline bool upgrade_ok(struct wk_http_scan *s)
{
	if (!s->seen_upgrade && !s->conn_upgrade)
		return true;
	if (!s->seen_upgrade || !s->conn_upgrade || s->method != METHOD_GET || s->http10 ||
	    s->seen_te || s->clen)
		return false;
	s->websocket = 1;
	return true;
}

/*
 * One byte of the head: c is the byte at s->pos (the caller makes sure
 * that is below WK_HTTP_HEAD_MAX). line and name_len are the header line to
 * be injected and the length of its name, for the "already present" check.
 * Returns 1 to stop: the head ended (s->head_end) or is refused (s->reason).
 */
static __always_inline long head_byte(struct wk_http_scan *s, const __u8 *line,
				      __u32 name_len, __u8 c)
{
	__u32 off = s->pos, tok = s->tok;
	__u8 lc = lower(c);

	s->pos = off + 1;

	switch (s->state) {
	case HS_METHOD:
		if (is_tchar(c)) {
			/* no allowed method is longer than 7 */
			if (tok >= 7)
				return stop(s, WK_HTTP_STAT_REFUSED_METHOD);
			s->method |= (__u64)c << (8 * (tok & 7));
			s->tok = tok + 1;
		} else if (c == ' ' && tok) {
			if (!method_allowed(tok, s->method))
				return stop(s, WK_HTTP_STAT_REFUSED_METHOD);
			s->state = HS_TARGET;
			s->tok = 0;
		} else {
			return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		}
		break;
	case HS_TARGET:
		if (c > ' ' && c < 0x7f) {
			target_byte(s, tok, lc);
			s->tok = tok + 1;
		} else if (c == ' ' && tok) {
			s->state = HS_VERSION;
			s->tok = 0;
		} else {
			return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		}
		break;
	case HS_VERSION:
		/* exactly HTTP/1.0 or HTTP/1.1 */
		if (tok < 7) {
			if (c != (__u8)(VERSION_PREFIX >> (8 * (tok & 7))))
				return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		} else if (tok == 7) {
			if (c != '0' && c != '1')
				return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
			s->http10 = c == '0';
		} else if (c == '\r') {
			s->state = HS_RL_LF;
		} else {
			return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		}
		s->tok = tok + 1;
		break;
	case HS_RL_LF:
		if (c != '\n')
			return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		s->rl_end = off + 1;
		s->state = HS_LINE;
		break;
	case HS_LINE:
		if (c == '\r') {
			s->state = HS_END_LF;
		} else if (is_tchar(c)) {
			s->word[0] = lc;
			s->word[1] = 0;
			s->word[2] = 0;
			s->tok = 1;
			s->same_name = name_len && lower(line[0]) == lc;
			s->state = HS_NAME;
		} else {
			/* obs-fold (SP/HT), bare LF, an empty name, controls */
			return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		}
		break;
	case HS_NAME:
		if (is_tchar(c)) {
			if (tok < 8)
				s->word[0] |= (__u64)lc << (8 * (tok & 7));
			else if (tok < 16)
				s->word[1] |= (__u64)lc << (8 * (tok & 7));
			else if (tok < 24)
				s->word[2] |= (__u64)lc << (8 * (tok & 7));
			if (s->same_name &&
			    (tok >= name_len || tok >= WK_HTTP_LINE_MAX ||
			     lower(line[tok & (WK_HTTP_LINE_MAX - 1)]) != lc))
				s->same_name = 0;
			s->tok = tok + 1;
		} else if (c == ':') {
			return end_of_name(s, name_len);
		} else {
			/* space before the colon, controls, separators */
			return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		}
		break;
	case HS_VALUE:
		if (c == '\r') {
			if (s->kind == HK_LENGTH && !s->digits)
				return stop(s, WK_HTTP_STAT_REFUSED_LENGTH);
			if (s->kind == HK_TRANSFER && s->te_match != 7)
				return stop(s, WK_HTTP_STAT_REFUSED_TRANSFER);
			if (s->kind == HK_UPGRADE && s->ws_match != VALUE_WEBSOCKET_LEN)
				return stop(s, WK_HTTP_STAT_REFUSED_UPGRADE);
			s->state = HS_LF;
		} else if (c == '\t' || c == ' ' || (c > ' ' && c != 0x7f)) {
			return value_byte(s, c);
		} else {
			/* bare LF, NUL, other controls */
			return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		}
		break;
	case HS_LF:
		if (c != '\n')
			return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		s->state = HS_LINE;
		break;
	case HS_END_LF:
		if (c != '\n')
			return stop(s, WK_HTTP_STAT_REFUSED_MALFORMED);
		if (!upgrade_ok(s))
			return stop(s, WK_HTTP_STAT_REFUSED_UPGRADE);
		s->head_end = off + 1;
		s->state = HS_DONE;
		return 1;
	default:
		return 1;
	}
	return 0;
}

/*
 * Word at a time: w is the 8 bytes at s->pos, loaded little-endian (the
 * caller makes sure all 8 are in the head's scan window). Returns how many
 * of them it took, having done exactly what head_byte() would have done
 * with each (s->pos is the caller's to advance), or 0: the caller then
 * takes the next byte with head_byte(). Only runs whose every byte takes
 * head_byte()'s plainest branch are taken here, so the outcome never
 * depends on which of the two read a byte, nor on where a write split the
 * head:
 *   - the method GET, PUT, POST or HEAD and its space, at the head's start;
 *   - "HTTP/1.1" or "HTTP/1.0" at the version's start (the CRLF after it
 *     goes byte by byte);
 *   - in a target in origin form (or past an absolute form's authority, or
 *     in one that is refused anyway), the bytes up to the first space,
 *     control, DEL or byte above 0x7e;
 *   - in a header name after its first byte, once it no longer matches the
 *     injected header's, the bytes up to the first that is not a letter, a
 *     digit or '-' (the ':', and rarer token characters, go byte by byte);
 *   - in a Host value's host name, the bytes up to the first that is not a
 *     letter, a digit, '-' or '.', lower-cased into the key as host_byte()
 *     does (well short of WK_HTTP_HOST_MAX; a port, spaces and rarer
 *     characters go byte by byte);
 *   - in a value of a header line the program does not read, the bytes up
 *     to the first control (tab included: it goes byte by byte) or DEL; in
 *     a Connection value outside a match of "upgrade", the same up to the
 *     first 'u' or 'U' too.
 * A run that stops at its first byte is not taken (0).
 */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "head_word() compares little-endian words"
#endif

#define WORD_ONES	0x0101010101010101ULL
#define WORD_HIGHS	0x8080808080808080ULL
/* Some byte of x is below n (n <= 128); exact (a borrow only starts at such a byte). */
#define WORD_HAS_BELOW(x, n)	(((x) - WORD_ONES * (n)) & ~(x) & WORD_HIGHS)
/* Some byte of x is b. */
#define WORD_HAS(x, b)		WORD_HAS_BELOW((x) ^ (WORD_ONES * (b)), 1)
/*
 * Per byte of x, its high bit set where m < byte < n (m < 128, n <= 128),
 * exactly: no borrow or carry crosses a byte, and a byte of 0x80 or more
 * is never flagged.
 */
#define WORD_BETWEEN(x, m, n)						\
	((WORD_ONES * (127 + (__u64)(n)) - ((x) & ~WORD_HIGHS)) & ~(x) &	\
	 (((x) & ~WORD_HIGHS) + WORD_ONES * (127 - (__u64)(m))) & WORD_HIGHS)
#define WORD_LOWER_BIT	(WORD_ONES * 0x20)

/*
 * How many bytes of a word come before the first one `stops` flags (high
 * bits only), 8 if none. For WORD_HAS_BELOW and WORD_HAS the lowest flag
 * is exact: a borrow only ever flags bytes above a byte truly flagged.
 */
static __always_inline __u32 word_run(__u64 stops)
{
	__u32 k = 0;

	if (!stops)
		return 8;
	if (!(stops & 0xffffffffULL)) {
		k += 4;
		stops >>= 32;
	}
	if (!(stops & 0xffffULL)) {
		k += 2;
		stops >>= 16;
	}
	if (!(stops & 0xffULL))
		k += 1;
	return k;
}

/* The first k bytes of w (k <= 8), the others 0. */
static __always_inline __u64 word_first(__u64 w, __u32 k)
{
	return k >= 8 ? w : w & ((1ULL << (8 * k)) - 1);
}

/* head_word() in a header name: k (1..8) bytes of letters, digits and '-'. */
static __always_inline __u32 name_word(struct wk_http_scan *s, __u64 w)
{
	__u64 ok = WORD_BETWEEN(w, '-' - 1, '-' + 1) | WORD_BETWEEN(w, '0' - 1, '9' + 1) |
		   WORD_BETWEEN(w, 'A' - 1, 'Z' + 1) | WORD_BETWEEN(w, 'a' - 1, 'z' + 1);
	__u32 k = word_run(~ok & WORD_HIGHS), tok = s->tok, sh;
	__u64 lw;

	/* Still the injected header's name so far: byte by byte, as head_byte() compares it. */
	if (!k || s->same_name)
		return 0;
	/* Each of these bytes has 0x20 set but the upper-case letters: lower() is an OR. */
	lw = word_first(w | WORD_LOWER_BIT, k);
	sh = 8 * (tok & 7);
	/* head_byte() keeps the name's first 24 bytes. */
	if (tok < 8) {
		s->word[0] |= lw << sh;
		if (sh)
			s->word[1] |= lw >> (64 - sh);
	} else if (tok < 16) {
		s->word[1] |= lw << sh;
		if (sh)
			s->word[2] |= lw >> (64 - sh);
	} else if (tok < 24) {
		s->word[2] |= lw << sh;
	}
	s->tok = tok + k;
	return k;
}

/* head_word() in a Host value's host name: k (1..8) bytes of letters, digits, '-' and '.'. */
static __always_inline __u32 host_word(struct wk_http_authority *a, __u64 w)
{
	/* lower(): 0x20 more for 'A'..'Z' (their flag, 0x80, moved down two bits) */
	__u64 lw = w | (WORD_BETWEEN(w, 'A' - 1, 'Z' + 1) >> 2);
	__u64 ok = WORD_BETWEEN(lw, '-' - 1, '.' + 1) | WORD_BETWEEN(lw, '0' - 1, '9' + 1) |
		   WORD_BETWEEN(lw, 'a' - 1, 'z' + 1);
	__u32 k = word_run(~ok & WORD_HIGHS), n = a->key.len;

	/*
	 * host_byte() turns the authority bad at a byte that finds the name
	 * longer than WK_HTTP_HOST_MAX: near there, byte by byte.
	 */
	if (!k || (a->state != AS_START && a->state != AS_NAME) || n > WK_HTTP_HOST_MAX + 1 - 8)
		return 0;
	lw = word_first(lw, k);
	for (__u32 i = 0; i < 8; i++) {
		if (i >= k)
			break;
		a->key.name[(n + i) & (WK_HTTP_HOST_KEY_NAME - 1)] = (__u8)(lw >> (8 * i));
	}
	a->key.len = n + k;
	a->state = AS_NAME;
	return k;
}

#define WORD_MASK4	0x00000000ffffffffULL
#define WORD_MASK5	0x000000ffffffffffULL
#define METHOD_SP_GET	W8('G', 'E', 'T', ' ', 0, 0, 0, 0)
#define METHOD_SP_PUT	W8('P', 'U', 'T', ' ', 0, 0, 0, 0)
#define METHOD_SP_POST	W8('P', 'O', 'S', 'T', ' ', 0, 0, 0)
#define METHOD_SP_HEAD	W8('H', 'E', 'A', 'D', ' ', 0, 0, 0)
#define VERSION_1_1	W8('H', 'T', 'T', 'P', '/', '1', '.', '1')
#define VERSION_1_0	W8('H', 'T', 'T', 'P', '/', '1', '.', '0')

static __always_inline __u32 head_word(struct wk_http_scan *s, __u64 w)
{
	__u32 k;

	switch (s->state) {
	case HS_METHOD:
		if (s->tok)
			return 0;
		if ((w & WORD_MASK4) == METHOD_SP_GET || (w & WORD_MASK4) == METHOD_SP_PUT) {
			s->method = w & 0xffffff;
			s->state = HS_TARGET;
			return 4;
		}
		if ((w & WORD_MASK5) == METHOD_SP_POST || (w & WORD_MASK5) == METHOD_SP_HEAD) {
			s->method = w & WORD_MASK4;
			s->state = HS_TARGET;
			return 5;
		}
		return 0;
	case HS_TARGET:
		/* the first byte decides the form: byte by byte */
		if (!s->tok || s->target_form == TF_SCHEME || s->target_form == TF_AUTHORITY)
			return 0;
		k = word_run(WORD_HAS_BELOW(w, 0x21) | (w & WORD_HIGHS) | WORD_HAS(w, 0x7f));
		s->tok += k;
		return k;
	case HS_VERSION:
		if (s->tok || (w != VERSION_1_1 && w != VERSION_1_0))
			return 0;
		s->http10 = w == VERSION_1_0;
		s->tok = 8;
		return 8;
	case HS_NAME:
		return name_word(s, w);
	case HS_VALUE:
		if (s->kind == HK_HOST)
			return host_word(&s->host, w);
		/*
		 * In Connection, outside a match of "upgrade", a byte other
		 * than 'u' leaves the matcher where it is: a run of them too.
		 */
		if (s->kind == HK_CONNECTION && !s->upgrade)
			return word_run(WORD_HAS_BELOW(w, 0x20) | WORD_HAS(w, 0x7f) |
					WORD_HAS(w, 'u') | WORD_HAS(w, 'U'));
		if (s->kind != HK_OTHER)
			return 0;
		return word_run(WORD_HAS_BELOW(w, 0x20) | WORD_HAS(w, 0x7f));
	}
	return 0;
}

#endif /* WIREKEY_HTTP_HEAD_BPF_H */
