/*
 * envelope.h - the routing envelope (reference §3), without a DOM and without copies.
 *
 * Binary -> relay: envelope_scan makes one pass over the message, validates all of it
 * as JSON and classifies it (§3.4), returning spans that point into the message: the
 * conn_id (still escaped), the exact bytes of the `frame` value (the phone receives
 * them verbatim, §3.5) and the `push_wake` value. Nothing is decoded or copied; the
 * conn_id is compared in place with envelope_conn_id_eq.
 *
 * Relay -> binary: the wrapped phone frame is
 *     envelope_write_wrap_prefix(conn_id) + <phone's bytes, verbatim> + ENVELOPE_WRAP_SUFFIX
 * sent as one text frame from an iovec; the phone's bytes must have passed json_valid
 * (phone side check, §3.2 step 2). The prefix depends only on the conn_id, so callers
 * build it once per phone. The close notice (§4.6) is envelope_write_close_notice.
 *
 * Contract: pure functions, no allocation, no globals. Inputs are caller-owned spans;
 * outputs are spans into them or bytes written into caller buffers with capacity
 * checks. Error and refusal reasons are fixed strings that never contain input bytes,
 * so they are safe to log as `err`.
 *
 * Key matching and Go (encoding/json into a struct with json.RawMessage frame):
 * - Keys are matched exactly, after decoding their escapes ("conn\u005fid" is conn_id,
 *   as in Go). Go also matches keys case-insensitively, with Unicode simple folding
 *   ("Conn_ID", "CONN_ID", even "clo\u017fe_code" with a long s); we deliberately do
 *   not: such keys are unknown and ignored. The protocol only requires tolerating
 *   unknown keys (§3.4), real binaries emit the exact names, and one spelling per field
 *   keeps "which duplicate wins" obvious.
 * - Duplicate keys: the last one wins, as Go. As in Go, a `null` conn_id or close_code
 *   leaves the field as it was (so {"conn_id":"a","conn_id":null} routes to "a"),
 *   while a `null` frame or push_wake replaces an earlier value (and counts as absent).
 * - Unknown keys are ignored, but their values must still be valid JSON.
 * - The whole message is validated before any type error counts (a syntax error is
 *   reported as "not valid JSON" even if a wrong type came earlier), as Go's
 *   Unmarshal checks validity first.
 * - A top-level `null` is MALFORMED here. Go's Unmarshal of null into a struct is a
 *   no-op, which its relay reports as a missing conn_id; both are "drop and warn"
 *   (§3.3 step 2), only the err text differs.
 * - Invalid UTF-8 anywhere is MALFORMED (json.h); Go would accept it in strings.
 */
#ifndef PYRELAY_ENVELOPE_H
#define PYRELAY_ENVELOPE_H

#include "core/common.h"
#include "envelope/json.h"

/* Classification of a binary -> relay message (§3.4), in the table's order. */
enum envelope_kind {
	ENVELOPE_MALFORMED = 0,   /* not JSON, not an object, or a field of the wrong type */
	ENVELOPE_PUSH_WAKE,       /* no conn_id, push_wake present and not null */
	ENVELOPE_MISSING_CONN_ID, /* no conn_id, no usable push_wake */
	ENVELOPE_MISSING_FRAME,   /* conn_id, close_code 0/absent, frame absent or null */
	ENVELOPE_DIRECTIVE,       /* conn_id, close_code != 0, frame optional */
	ENVELOPE_ROUTED,          /* conn_id, close_code 0/absent, frame present */
};

struct envelope {
	enum envelope_kind kind;
	/*
	 * Fixed text saying why the message is dropped (MALFORMED, MISSING_CONN_ID,
	 * MISSING_FRAME); NULL for the other kinds. Never contains input bytes.
	 */
	const char *err;
	/* conn_id: raw bytes between the quotes, escapes not decoded. Empty (len 0) when
	 * absent, "" or null. Use envelope_conn_id_eq to compare, json_str_unescape to
	 * decode. */
	struct json_str conn_id;
	/* close_code: 0 when absent or null. */
	uint16_t close_code;
	/* frame: has_frame iff present and not null; then `frame` is the value's exact
	 * bytes (valid JSON, no surrounding whitespace). Set for ROUTED and DIRECTIVE. */
	bool has_frame;
	struct span frame;
	/* push_wake: the value's exact bytes, set (non-empty) only for PUSH_WAKE; parse it
	 * with envelope_push_wake_parse. */
	struct span push_wake;
};

/*
 * Scan and classify one binary -> relay message. Always fills *env completely and
 * returns env->kind. Spans in *env point into `msg`. Cost: one pass, O(len), bounded
 * stack (JSON_DEPTH_MAX bits), nothing allocated. Any message size is accepted here;
 * the 256 KiB limit is the WebSocket layer's.
 */
enum envelope_kind envelope_scan(struct span msg, struct envelope *env);

/*
 * The routed form real binaries send, exactly (§3.4 row 1, as Go marshals it):
 *     {"conn_id":"<id>","frame":<V>}
 * with nothing else: no whitespace outside V, an id of one or more printable ASCII
 * bytes other than '"' and '\', and V not empty, not starting or ending with
 * whitespace, and not `null`. True when msg has that shape; then *conn_id and *frame
 * point into msg. If V is then one valid JSON value nested in one object
 * (json_value_copy(V, 1, dst)), envelope_scan would say ROUTED with exactly that
 * conn_id and frame, so a caller may validate V while copying it to where it goes
 * (issue #17). If V is not, nothing follows ({"conn_id":"a","frame":1,"b":2} has
 * this shape with V = `1,"b":2`): scan the message.
 */
bool envelope_routed_shape(struct span msg, struct json_str *conn_id, struct span *frame);

/* Short stable name of a kind for logs and tests ("routed", "malformed", ...). */
const char *envelope_kind_name(enum envelope_kind kind);

/*
 * Is the decoded value of a conn_id returned by envelope_scan (raw_escaped, with its
 * has_escapes flag) byte-equal to `expected` (our stored conn_id bytes)? Decodes in
 * place (Go's rules, see json_str_eq); allocates nothing. raw_escaped must come from
 * envelope_scan or json_scan_string (it is asserted to be well formed).
 * Note: a stored conn_id containing invalid UTF-8 can never match, because our writer
 * (like Go's) sent it to the binary with \ufffd in place of the bad bytes.
 */
bool envelope_conn_id_eq(struct span raw_escaped, bool has_escapes, struct span expected);

/* ---- push wake (§7.2) ---- */

struct push_wake {
	struct json_str platform; /* decoded value is exactly "fcm" */
	struct json_str token;    /* non-empty; raw (escaped) bytes, decode with
				   * json_str_unescape (decoded length <= raw length) or
				   * splice verbatim between quotes into the FCM body */
};

/*
 * Structural validation of a push_wake value (the span from envelope_scan; any span
 * works, it is validated again): a JSON object whose `platform` and `token` members,
 * if present, are strings (null leaves them empty, duplicates: last wins, other keys
 * ignored, exact key match - as envelope_scan); `platform` must decode to exactly
 * "fcm" and `token` must be non-empty. Returns NULL and fills *out on success,
 * otherwise a fixed refusal reason (never containing input bytes). A bare `null` is
 * refused as "not a JSON object" (Go would decode it to empty fields and refuse the
 * platform; envelope_scan never hands over a null push_wake anyway).
 */
const char *envelope_push_wake_parse(struct span value, struct push_wake *out);

/* ---- writers (relay -> binary) ---- */

#define ENVELOPE_WRAP_PREFIX_HEAD "{\"conn_id\":\""
#define ENVELOPE_WRAP_PREFIX_TAIL "\",\"frame\":"
#define ENVELOPE_WRAP_SUFFIX "}"
#define ENVELOPE_WRAP_SUFFIX_LEN 1u

/* Upper bound of the wrap prefix for a conn_id of n bytes (any content). */
#define ENVELOPE_WRAP_PREFIX_LEN_MAX(n) \
	(sizeof(ENVELOPE_WRAP_PREFIX_HEAD) - 1 + JSON_ESCAPED_LEN_MAX(n) + \
	 sizeof(ENVELOPE_WRAP_PREFIX_TAIL) - 1)

/* Upper bound of the close notice for a conn_id of n bytes (code up to 65535). */
#define ENVELOPE_CLOSE_NOTICE_LEN_MAX(n) \
	(sizeof("{\"conn_id\":\"") - 1 + JSON_ESCAPED_LEN_MAX(n) + \
	 sizeof("\",\"close_code\":65535}") - 1)

/*
 * Write `{"conn_id":"<escaped conn_id>","frame":` into out. conn_id is escaped exactly
 * as Go's encoding/json does (json_escape), so the binary sees the same bytes as from
 * the Go relay. Returns the length written, or 0 if cap is too small (out is then
 * garbage). cap >= ENVELOPE_WRAP_PREFIX_LEN_MAX(conn_id.len) always suffices.
 */
size_t envelope_write_wrap_prefix(uint8_t *out, size_t cap, struct span conn_id);

/*
 * Write the close notice `{"conn_id":"<escaped conn_id>","close_code":<n>}` (no frame
 * key, §4.6) into out. Returns the length written, or 0 if cap is too small.
 * cap >= ENVELOPE_CLOSE_NOTICE_LEN_MAX(conn_id.len) always suffices.
 */
size_t envelope_write_close_notice(uint8_t *out, size_t cap, struct span conn_id,
				   uint16_t close_code);

#endif
