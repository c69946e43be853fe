/*
 * json_verdict.c - driver for tests/checks/json_differential.sh.
 *
 * Reads records from stdin, each a 4-byte little-endian length and that many bytes,
 * and prints one line per record with what our code says about it:
 *
 *   <json_valid 0|1> <kind> <err> <conn_id hex> <close_code> <frame off> <frame len>
 *   <push_wake off> <push_wake len> <push_wake verdict>
 *
 * err is envelope.err with spaces as '_' (or "-"); conn_id is the decoded value in hex
 * ("-" when empty); offsets are byte offsets into the record (-1 when absent); the
 * push_wake verdict is "ok:<decoded token hex>" or the refusal reason with '_' for
 * spaces, "-" when the kind is not push_wake. The Python side computes the same line
 * from its own json module and compares.
 *
 * The line is computed at the widest level of instructions the CPU has (core/simd.h),
 * as the relay runs by default; every narrower level must give the same json_valid,
 * kind and frame span, and json_valid_copy the same verdict and a byte-exact copy at
 * every level, and a message in the routed shape (envelope_routed_shape) whose frame
 * json_value_copy accepts must scan as ROUTED with that conn_id and frame, or the
 * driver stops with status 2.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/simd.h"
#include "envelope/envelope.h"

#include "../oracles/one_pass.h"

static void put_reason(const char *s)
{
	if (!s) {
		fputs("-", stdout);
		return;
	}
	for (; *s; s++)
		putchar(*s == ' ' ? '_' : *s);
}

static void put_hex(const uint8_t *p, size_t n)
{
	if (n == 0) {
		fputs("-", stdout);
		return;
	}
	for (size_t k = 0; k < n; k++)
		printf("%02x", p[k]);
}

static long off_of(struct span whole, struct span part)
{
	if (part.ptr == NULL)
		return -1;
	return (long)(part.ptr - whole.ptr);
}

/* The narrower levels agree with the widest (selected on return), and json_valid_copy
 * with json_valid at every level. */
static void same_at_every_level(struct span in, bool valid, enum envelope_kind kind, const struct envelope *env)
{
	enum simd_level most = simd_detect();
	for (enum simd_level l = SIMD_WORD; l < most; l++) {
		struct envelope e;
		simd_select(l);
		bool v = json_valid(in);
		bool vc = one_pass_copy_holds(in, valid);
		enum envelope_kind k = envelope_scan(in, &e);
		simd_select(most);
		if (v != valid || !vc || k != kind || e.has_frame != env->has_frame ||
		    (env->has_frame && (e.frame.ptr != env->frame.ptr || e.frame.len != env->frame.len))) {
			fprintf(stderr, "json_verdict: %s disagrees with %s\n", simd_name(l), simd_name(most));
			exit(2);
		}
	}
}

static void verdict(struct span in)
{
	struct envelope env;
	enum envelope_kind kind = envelope_scan(in, &env);
	uint8_t *dec = malloc(in.len + 1);

	if (!dec) {
		perror("malloc");
		exit(2);
	}
	bool valid = json_valid(in);
	if (!one_pass_copy_holds(in, valid)) {
		fprintf(stderr, "json_verdict: json_valid_copy disagrees with json_valid at %s\n", simd_name(simd_selected()));
		exit(2);
	}
	same_at_every_level(in, valid, kind, &env);
	if (!one_pass_route_holds(in, &env, NULL)) {
		fprintf(stderr, "json_verdict: the routed shape's one pass disagrees with envelope_scan\n");
		exit(2);
	}
	printf("%d %s ", valid ? 1 : 0, envelope_kind_name(kind));
	put_reason(env.err);
	putchar(' ');
	size_t n = json_str_unescape(env.conn_id, dec, in.len + 1);
	if (n == SIZE_MAX) {
		fprintf(stderr, "conn_id decode overflow\n");
		exit(2);
	}
	put_hex(dec, n);
	printf(" %u %ld %zu %ld %zu ", env.close_code, env.has_frame ? off_of(in, env.frame) : -1L,
	       env.has_frame ? env.frame.len : 0, off_of(in, env.push_wake), env.push_wake.len);
	if (kind == ENVELOPE_PUSH_WAKE) {
		struct push_wake pw;
		const char *err = envelope_push_wake_parse(env.push_wake, &pw);
		if (err) {
			put_reason(err);
		} else {
			n = json_str_unescape(pw.token, dec, in.len + 1);
			fputs("ok:", stdout);
			put_hex(dec, n);
		}
	} else {
		fputs("-", stdout);
	}
	putchar('\n');
	free(dec);
}

int main(void)
{
	uint8_t hdr[4];

	simd_select(simd_detect());
	while (fread(hdr, 1, 4, stdin) == 4) {
		size_t len = (size_t)hdr[0] | (size_t)hdr[1] << 8 | (size_t)hdr[2] << 16 |
			     (size_t)hdr[3] << 24;
		/* exact-size block: with sanitizers on, any over-read is caught */
		uint8_t *buf = malloc(len ? len : 1);
		if (!buf || fread(buf, 1, len, stdin) != len) {
			fprintf(stderr, "json_verdict: short record\n");
			return 2;
		}
		verdict(span_make(len ? buf : NULL, len));
		free(buf);
	}
	return 0;
}
