/*
 * json.h - strict RFC 8259 JSON scanning over a byte span, without a DOM.
 *
 * The relay never builds a tree: it only needs "is this valid JSON" (phone side,
 * reference §3.1) and, for the routing envelope, a walk over one object that finds
 * the raw byte span of some member values (envelope.h). These are the building blocks.
 *
 * Contract:
 * - Pure functions over a caller-owned span: no allocation, no globals, no recursion,
 *   never read outside [in.ptr, in.ptr + in.len). Returned spans point into the input.
 * - Grammar is RFC 8259 exactly, nothing laxer:
 *     - whitespace is only SP, HTAB, LF, CR; allowed before and after the top-level value
 *       and around structural characters; an empty input (or only whitespace) is invalid;
 *       anything after the top-level value except whitespace is invalid;
 *     - no NaN / Infinity, no leading '+', no leading zeros, no '.5' / '5.', no comments,
 *       no trailing commas, no single quotes, no BOM;
 *     - strings: raw bytes 0x00..0x1F are invalid, escapes are exactly \" \\ \/ \b \f \n
 *       \r \t \uXXXX (hex in either case);
 *     - every byte must be valid UTF-8 (RFC 3629: no overlongs, no encoded surrogates
 *       ED A0..BF xx, nothing above U+10FFFF). Outside strings the grammar only admits
 *       ASCII, so this is checked inside strings. The input may come from a binary
 *       WebSocket frame, which nobody UTF-8-checked before us.
 *     - a \uD800..\uDFFF escape that is not part of a high+low pair ("lone surrogate") is
 *       ACCEPTED: it is what the RFC 8259 ABNF allows (§7 grammar; §8.2 only warns that
 *       receivers may behave unpredictably), and Go accepts it too (it decodes it to
 *       U+FFFD, as json_str_eq / json_str_unescape do).
 *     - duplicate object keys are accepted (RFC 8259 §4: names SHOULD be unique, it is
 *       not a syntax rule); which one counts is the caller's business (envelope: last).
 *     - numbers of any length are accepted (the grammar has no limit); only their syntax
 *       is checked here.
 * - Nesting is limited to JSON_DEPTH_MAX open containers (objects + arrays), counted
 *   over the whole document, as Go's decoder does. Deeper input is invalid. The limit
 *   is kept with a bit stack on the C stack (JSON_DEPTH_MAX bits = 1.25 KiB), so deep
 *   input costs neither recursion nor heap.
 *
 * Divergence from Go (deliberate): Go's scanner accepts invalid UTF-8 bytes inside
 * strings (and replaces them with U+FFFD when decoding); we reject them, because every
 * byte we accept may be forwarded verbatim in a text frame (§3.6), which must be UTF-8.
 */
#ifndef PYRELAY_JSON_H
#define PYRELAY_JSON_H

#include "core/common.h"

/*
 * Maximum nesting depth: the same limit as Go's encoding/json scanner (maxNestingDepth
 * = 10000), so a document Go accepts is not refused for its depth, and a hostile
 * "[[[[..." costs a bounded, small amount of stack.
 */
#define JSON_DEPTH_MAX 10000u

/* Is the whole span exactly one valid JSON text (RFC 8259 §2, plus the rules above)? */
bool json_valid(struct span in);

/*
 * json_valid, and the span's bytes copied to dst (in.len bytes, caller-owned, not
 * overlapping in) in the same pass where it can (issue #17): inside a long plain
 * run of a string the scan stores each vector it checks; the bytes between such runs
 * are copied with memcpy. True: dst holds exactly in's bytes. False: dst's first
 * in.len bytes are unspecified; nothing past them is ever written.
 */
bool json_valid_copy(struct span in, uint8_t *dst);

/* The same for exactly one value with nothing around it, not even whitespace, nested
 * inside `depth` containers (JSON_DEPTH_MAX counts them, as json_skip_value's depth):
 * what json_skip_value(in, &0, depth, ...) accepts when it ends at in.len. */
bool json_value_copy(struct span in, uint32_t depth, uint8_t *dst);

/* ---- building blocks for walking one level of a document (envelope.c) ---- */

/* A scanned string: raw bytes between the quotes, escapes not decoded. */
struct json_str {
	struct span raw;
	bool has_escapes; /* raw contains at least one backslash escape */
};

/* Walk the members of the one object that is the whole span (whitespace around it
 * allowed): fn(ctx, name, raw value) for each, in order, duplicates included. Every
 * value is checked by json_skip_value (depth 1). False when the span is not one
 * object or fn returns false (config/fcm.c, control/acme_json.c). */
typedef bool (*json_member_fn)(void *ctx, struct json_str name, struct span value);
bool json_walk_object(struct span in, json_member_fn fn, void *ctx);

/* First position >= pos that is not RFC 8259 whitespace (or in.len). */
size_t json_skip_ws(struct span in, size_t pos);

/*
 * Scan the string starting at in.ptr[*pos], which must be '"'. On success *pos is just
 * past the closing quote and *out describes the contents. False (and *pos, *out
 * unspecified) if the string is not valid: unterminated, control byte, bad escape,
 * invalid UTF-8.
 */
bool json_scan_string(struct span in, size_t *pos, struct json_str *out);

/*
 * Validate and skip exactly one value starting at in.ptr[*pos] (no leading whitespace
 * is skipped: the caller did that). `depth` is the number of containers already open
 * around this value (0 for a top-level value), so the JSON_DEPTH_MAX limit holds over
 * the whole document. On success *pos is just past the value and *raw (if not NULL) is
 * the value's exact bytes. Returns false if the value is invalid or would nest deeper
 * than JSON_DEPTH_MAX.
 */
bool json_skip_value(struct span in, size_t *pos, uint32_t depth, struct span *raw);

/* What kind of value a raw value span (from json_skip_value) holds, by its first byte. */
enum json_type {
	JSON_TYPE_OBJECT,
	JSON_TYPE_ARRAY,
	JSON_TYPE_STRING,
	JSON_TYPE_NUMBER,
	JSON_TYPE_TRUE,
	JSON_TYPE_FALSE,
	JSON_TYPE_NULL,
};
enum json_type json_type_of(struct span raw_value);

/* ---- strings: decoding without allocating ---- */

/*
 * Is the decoded value of s (from json_scan_string) byte-equal to `expected`? Decoding
 * follows Go's encoding/json: a \uXXXX high surrogate followed by a \uXXXX low surrogate
 * is one code point; any other surrogate escape decodes to U+FFFD (EF BF BD). s must be
 * a string this module validated (asserted).
 */
bool json_str_eq(struct json_str s, struct span expected);

/* Same, against a NUL-terminated literal (key matching). */
bool json_str_eq_cstr(struct json_str s, const char *lit);

/*
 * Decode s (from json_scan_string) into out, with the same rules as json_str_eq.
 * Decoding never grows a string, so cap >= s.raw.len always suffices. Returns the
 * decoded length, or SIZE_MAX if cap is too small (out then holds a partial result).
 */
size_t json_str_unescape(struct json_str s, uint8_t *out, size_t cap);

/* ---- strings: encoding exactly as Go's encoding/json Marshal does ---- */

/*
 * Escape arbitrary bytes as the contents of a JSON string (no surrounding quotes),
 * byte-for-byte as Go's json.Marshal of a string (HTMLEscape on, Go >= 1.22):
 *   "  \  -> \"  \\          BS FF LF CR HT -> \b \f \n \r \t
 *   other bytes 0x00..0x1F  -> \u00xx (lowercase hex)
 *   <  >  &                 -> \u003c \u003e \u0026
 *   U+2028  U+2029          -> \u2028 \u2029
 *   each byte that does not start a valid, complete UTF-8 sequence -> \ufffd
 *   everything else (including DEL and valid multi-byte UTF-8) is copied.
 * Go < 1.22 wrote \u0008 and \u000c for BS and FF; both decode to the same string.
 * The output is always valid UTF-8 and at most JSON_ESCAPED_LEN_MAX(len) bytes.
 */
#define JSON_ESCAPED_LEN_MAX(n) ((size_t)(n) * 6u)

/* Exact escaped length of s. */
size_t json_escaped_len(struct span s);

/* Write the escaped form of s into out. Returns bytes written, or SIZE_MAX if cap is
 * smaller than json_escaped_len(s) (nothing useful is written then). */
size_t json_escape(uint8_t *out, size_t cap, struct span s);

#endif
