#include "core/log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


static int log_fd = STDERR_FILENO;

void log_set_fd(int fd)
{
	log_fd = fd < 0 ? STDERR_FILENO : fd;
}

struct out {
	char *p;
	size_t len;
	size_t cap;
	bool overflow; /* something did not fit: the caller rolls the field back */
};

static void put(struct out *o, const char *s, size_t n)
{
	size_t room = o->cap - o->len;
	if (n > room) {
		n = room;
		o->overflow = true;
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

static void puts_(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static bool needs_quote(const uint8_t *p, size_t n)
{
	if (n == 0)
		return true;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = p[i];
		if (c <= ' ' || c == '=' || c == '"' || c == 0x7f || c >= 0x80)
			return true;
	}
	return false;
}

/* Go strconv.Quote-like: printable ASCII as is, \" \\ \n \r \t, other bytes \xNN.
 * Non-ASCII bytes are escaped too: a value never carries raw multi-byte text, which
 * keeps the output pure ASCII and unforgeable whatever the input. */
static void put_quoted(struct out *o, const uint8_t *p, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	bool truncated = n > LOG_VALUE_BYTES_MAX;
	if (truncated)
		n = LOG_VALUE_BYTES_MAX;
	put(o, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		uint8_t c = p[i];
		char esc[4];
		switch (c) {
		case '"': put(o, "\\\"", 2); break;
		case '\\': put(o, "\\\\", 2); break;
		case '\n': put(o, "\\n", 2); break;
		case '\r': put(o, "\\r", 2); break;
		case '\t': put(o, "\\t", 2); break;
		default:
			if (c >= 0x20 && c < 0x7f) {
				put(o, (const char *)&c, 1);
			} else {
				esc[0] = '\\';
				esc[1] = 'x';
				esc[2] = hex[c >> 4];
				esc[3] = hex[c & 15];
				put(o, esc, 4);
			}
		}
	}
	if (truncated)
		put(o, "...", 3);
	put(o, "\"", 1);
}

static void put_value(struct out *o, const uint8_t *p, size_t n)
{
	if (needs_quote(p, n) || n > LOG_VALUE_BYTES_MAX)
		put_quoted(o, p, n);
	else
		put(o, (const char *)p, n);
}

size_t log_format(char *buf, size_t cap, int64_t now_ms, enum log_level level, const char *msg,
		  const struct log_kv *kvs, size_t n)
{
	ASSERT(cap >= 64);
	struct out o = { .p = buf, .len = 0, .cap = cap - 1 }; /* keep room for '\n' */
	char tbuf[64];
	time_t secs = (time_t)(now_ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	size_t tl = strftime(tbuf, sizeof tbuf, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(tbuf + tl, sizeof tbuf - tl, ".%03dZ", (int)(now_ms % 1000));
	puts_(&o, "time=");
	puts_(&o, tbuf);
	puts_(&o, level == LOG_LEVEL_INFO ? " level=INFO" : level == LOG_LEVEL_WARN ? " level=WARN" : " level=ERROR");
	puts_(&o, " msg=");
	put_value(&o, (const uint8_t *)msg, strlen(msg));
	for (size_t i = 0; i < n; i++) {
		char num[32];
		/* A field that does not fit whole is dropped with every later one, so a line
		 * never ends inside a quoted value or half an escape. */
		size_t mark = o.len;
		put(&o, " ", 1);
		puts_(&o, kvs[i].key);
		put(&o, "=", 1);
		switch (kvs[i].type) {
		case LOG_KV_STR: {
			const char *s = kvs[i].v.str ? kvs[i].v.str : "";
			put_value(&o, (const uint8_t *)s, strlen(s));
			break;
		}
		case LOG_KV_BYTES:
			put_value(&o, kvs[i].v.bytes.ptr, kvs[i].v.bytes.len);
			break;
		case LOG_KV_INT:
			snprintf(num, sizeof num, "%" PRId64, kvs[i].v.i);
			puts_(&o, num);
			break;
		case LOG_KV_UINT:
			snprintf(num, sizeof num, "%" PRIu64, kvs[i].v.u);
			puts_(&o, num);
			break;
		}
		if (o.overflow) {
			o.len = mark;
			break;
		}
	}
	buf[o.len++] = '\n';
	return o.len;
}

void log_event(enum log_level level, const char *msg, const struct log_kv *kvs, size_t n)
{
	char buf[LOG_LINE_BYTES_MAX];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	size_t len = log_format(buf, sizeof buf, now_ms, level, msg, kvs, n);
	/* Logging must never take the relay down: a full or closed stderr loses the line. */
	while (write(log_fd, buf, len) < 0 && errno == EINTR) {
	}
}
