/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The chunked framing scanner of http-inject.bpf.c: one byte at a time,
 * over a struct wk_http_chunk, with no BPF helper, map or packet pointer in
 * it (see http-head.bpf.h, whose is_tchar() and lower() it uses). The BPF
 * side fetches each byte in a bpf_loop callback (chunk_byte()) and turns
 * what was scanned into an approval.
 */
#ifndef WIREKEY_HTTP_CHUNKED_BPF_H
#define WIREKEY_HTTP_CHUNKED_BPF_H

#include "http-head.bpf.h"

/*
 * Where the scan of a chunked body's framing is, between writes: the state
 * applies to the stream position where the bytes accounted for in `left`
 * end. Socket storage, like struct wk_http_scan, so the bpf_loop callback
 * is verified once.
 */
struct wk_http_chunk {
	__u64 size;			/* the chunk-size being read */
	__u64 pending;			/* this run: announced data past the window */
	__u32 pos;			/* this run: bytes of the message scanned or skipped */
	__u32 end;			/* this run: bytes of the message in the window */
	__u32 state;			/* enum chunk_state */
	__u32 digits;			/* hex digits of the chunk-size */
	__u32 len;			/* bytes of this chunk's extensions, or of the trailer section */
	__u32 tok;			/* bytes of the current trailer name */
	__u32 same_name;		/* the trailer name is the injected header's so far */
	__u32 reason;			/* WK_HTTP_STAT_REFUSED_*; 0 while acceptable */
};

/*
 * Bytes of a message looked at in one run, and the limits on what the
 * framing may hold. Nothing is corked here, so these only bound the work
 * per run and what the upstream must accept.
 */
#define WK_HTTP_CHUNK_WINDOW	4096
#define WK_HTTP_CHUNK_DIGITS	15	/* hex digits of a chunk-size, leading zeros included */
#define WK_HTTP_CHUNK_EXT_MAX	1024	/* bytes of one chunk's extensions, ';' included */
#define WK_HTTP_TRAILER_MAX	WK_HTTP_HEAD_MAX	/* the trailer section, final CRLF included */

enum chunk_state {
	CS_SIZE,		/* chunk-size: hex digits, then ';' or CR */
	CS_EXT,			/* after ';': extensions up to CR */
	CS_SIZE_LF,		/* LF ending the chunk-size line */
	CS_DATA_CR,		/* CR after the chunk's data */
	CS_DATA_LF,
	CS_TRAILER,		/* a trailer line starts (or CR: the body ends) */
	CS_TNAME,		/* trailer name, up to ':' */
	CS_TVALUE,		/* trailer value, up to CR */
	CS_TLF,
	CS_END_LF,		/* LF ending the body */
	CS_DONE,
};

static __always_inline long chunk_stop(struct wk_http_chunk *c, __u32 reason)
{
	c->reason = reason;
	return 1;
}

/*
 * One byte of chunked framing: ch is the byte at c->pos, which the caller
 * keeps below c->end (the window). line and name_len are the header line
 * being injected and its name's length, for the trailer check. Returns 1
 * to stop: when the body ends, when a chunk's data runs past the window
 * (chunk.pending), or on malformed framing (chunk.reason). Data inside the
 * window is skipped (c->pos jumps over it), never looked at.
 */
static __always_inline long chunk_step(struct wk_http_chunk *c, const __u8 *line,
				       __u32 name_len, __u8 ch)
{
	__u32 off = c->pos, tok = c->tok, d;
	__u8 lc = lower(ch);
	__u64 room;

	c->pos = off + 1;

	switch (c->state) {
	case CS_SIZE:
		if (ch >= '0' && ch <= '9')
			d = ch - '0';
		else if (lc >= 'a' && lc <= 'f')
			d = lc - 'a' + 10;
		else
			d = 16;
		if (d < 16) {
			if (++c->digits > WK_HTTP_CHUNK_DIGITS)
				return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
			c->size = c->size << 4 | d;
		} else if (!c->digits) {
			/* no size: an empty line, whitespace, a sign, "0x" */
			return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
		} else if (ch == ';') {
			c->state = CS_EXT;
			c->len = 1;
		} else if (ch == '\r') {
			c->state = CS_SIZE_LF;
		} else {
			/* whitespace after the size, bare LF, anything else */
			return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
		}
		break;
	case CS_EXT:
		/*
		 * Token names and values only: no quoted strings (a parser
		 * that honours a backslash there could disagree about where
		 * the line ends), no controls, no bare LF.
		 */
		if (ch == '\r') {
			c->state = CS_SIZE_LF;
		} else if (is_tchar(ch) || ch == ';' || ch == '=' || ch == ' ' || ch == '\t') {
			if (++c->len > WK_HTTP_CHUNK_EXT_MAX)
				return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
		} else {
			return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
		}
		break;
	case CS_SIZE_LF:
		if (ch != '\n')
			return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
		if (!c->size) {
			/* the last chunk: trailer lines, then an empty line */
			c->state = CS_TRAILER;
			c->len = 0;
			break;
		}
		c->state = CS_DATA_CR;
		room = c->end - (off + 1);
		if (c->size <= room) {
			/* the data is in the window: step over it */
			c->pos = off + 1 + (__u32)c->size;
			break;
		}
		/* the data runs past the window: account for it whole */
		c->pending = c->size;
		return 1;
	case CS_DATA_CR:
		if (ch != '\r')
			return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
		c->state = CS_DATA_LF;
		break;
	case CS_DATA_LF:
		if (ch != '\n')
			return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
		c->state = CS_SIZE;
		c->size = 0;
		c->digits = 0;
		break;
	default:
		/* the trailer section: header lines, as in a head */
		if (++c->len > WK_HTTP_TRAILER_MAX)
			return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
		switch (c->state) {
		case CS_TRAILER:
			if (ch == '\r') {
				c->state = CS_END_LF;
			} else if (is_tchar(ch)) {
				c->tok = 1;
				c->same_name = name_len && lower(line[0]) == lc;
				c->state = CS_TNAME;
			} else {
				/* obs-fold, bare LF, an empty name, controls */
				return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
			}
			break;
		case CS_TNAME:
			if (is_tchar(ch)) {
				if (c->same_name &&
				    (tok >= name_len || tok >= WK_HTTP_LINE_MAX ||
				     lower(line[tok & (WK_HTTP_LINE_MAX - 1)]) != lc))
					c->same_name = 0;
				c->tok = tok + 1;
			} else if (ch == ':') {
				/* the injected header as a trailer: a server that
				 * merges trailers into headers would see two */
				if (c->same_name && tok == name_len)
					return chunk_stop(c, WK_HTTP_STAT_REFUSED_HEADER);
				c->state = CS_TVALUE;
			} else {
				return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
			}
			break;
		case CS_TVALUE:
			if (ch == '\r')
				c->state = CS_TLF;
			else if (ch != '\t' && ch != ' ' && (ch <= ' ' || ch == 0x7f))
				return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
			break;
		case CS_TLF:
			if (ch != '\n')
				return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
			c->state = CS_TRAILER;
			break;
		case CS_END_LF:
			if (ch != '\n')
				return chunk_stop(c, WK_HTTP_STAT_REFUSED_CHUNKED);
			c->state = CS_DONE;
			return 1;
		default:
			return 1;
		}
	}
	return 0;
}

#endif /* WIREKEY_HTTP_CHUNKED_BPF_H */
