/*
 * log.h - structured key=value lines on stderr, in the reference's slog text format:
 *
 *   time=2026-11-23T10:00:00.123Z level=INFO msg=server_claimed server_id=abc remote=127.0.0.1
 *
 * Contract:
 * - One write(2) per line, so lines from several threads never interleave.
 * - Values are quoted (Go strconv.Quote style) when empty or when they contain a space,
 *   '=', '"', a control character, or bytes that are not valid UTF-8, so no value can
 *   forge a line or a key. Output per line is bounded (LOG_LINE_BYTES_MAX); longer
 *   values are truncated with "..." inside the quotes.
 * - Keys must be string literals from the allowlist in docs/logging.md; a test
 *   (tests/checks/log_keys.sh) greps every LOG_* call in src/ and fails on any other
 *   key. Never pass tokens, payloads, User-Agent or raw headers as values.
 */
#ifndef PYRELAY_LOG_H
#define PYRELAY_LOG_H

#include "core/common.h"

#define LOG_LINE_BYTES_MAX 2048
#define LOG_VALUE_BYTES_MAX 512

enum log_level { LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

enum log_kv_type { LOG_KV_STR, LOG_KV_BYTES, LOG_KV_INT, LOG_KV_UINT };

struct log_kv {
	const char *key;
	enum log_kv_type type;
	union {
		const char *str;
		struct span bytes;
		int64_t i;
		uint64_t u;
	} v;
};

#define KV_STR(k, s) ((struct log_kv){ .key = (k), .type = LOG_KV_STR, .v.str = (s) })
#define KV_BYTES(k, p, n) ((struct log_kv){ .key = (k), .type = LOG_KV_BYTES, .v.bytes = span_make((p), (n)) })
#define KV_SPAN(k, sp) ((struct log_kv){ .key = (k), .type = LOG_KV_BYTES, .v.bytes = (sp) })
#define KV_INT(k, x) ((struct log_kv){ .key = (k), .type = LOG_KV_INT, .v.i = (int64_t)(x) })
#define KV_UINT(k, x) ((struct log_kv){ .key = (k), .type = LOG_KV_UINT, .v.u = (uint64_t)(x) })

void log_event(enum log_level level, const char *msg, const struct log_kv *kvs, size_t n);

/* Format one line into out (no trailing NUL needed); returns its length including '\n'.
 * Exposed for tests. now_ms is wall-clock milliseconds since the epoch. */
size_t log_format(char *out, size_t cap, int64_t now_ms, enum log_level level, const char *msg,
		  const struct log_kv *kvs, size_t n);

/* Redirect output (tests); fd < 0 restores stderr. */
void log_set_fd(int fd);

#define LOG_INFO(msg, ...) \
	do { \
		const struct log_kv kvs_[] = { __VA_ARGS__ }; \
		log_event(LOG_LEVEL_INFO, (msg), kvs_, ARRAY_LEN(kvs_)); \
	} while (0)
#define LOG_WARN(msg, ...) \
	do { \
		const struct log_kv kvs_[] = { __VA_ARGS__ }; \
		log_event(LOG_LEVEL_WARN, (msg), kvs_, ARRAY_LEN(kvs_)); \
	} while (0)
#define LOG_ERROR(msg, ...) \
	do { \
		const struct log_kv kvs_[] = { __VA_ARGS__ }; \
		log_event(LOG_LEVEL_ERROR, (msg), kvs_, ARRAY_LEN(kvs_)); \
	} while (0)

#endif
