/*
 * test_log.c - log_format: the slog text layout, quoting rules and the guarantee that
 * no value can add a line or a key. A small logfmt reader in this file parses every
 * line back and checks it yields exactly the keys and values that went in.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/log.h"

#define PAIRS_MAX 16
#define FUZZ_ROUNDS 20000
#define FUZZ_VALUE_BYTES_MAX 80
#define FUZZ_SEED 0x9e3779b97f4a7c15ull
/* 2026-11-23T10:00:00.123Z */
#define T_2026 1795428000123ll

struct pair {
	char key[32];
	char value[LOG_VALUE_BYTES_MAX + 8];
	size_t value_len;
	bool quoted;
};

struct line {
	struct pair pairs[PAIRS_MAX];
	size_t n;
};

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Parse one formatted line strictly: key=value pairs separated by one space, keys
 * [a-z_], values bare or quoted with \" \\ \n \r \t \xNN escapes, one final '\n' and
 * nothing but printable ASCII before it. False on anything else. */
static bool parse_line(const char *s, size_t len, struct line *out)
{
	size_t i = 0;

	out->n = 0;
	if (len == 0 || s[len - 1] != '\n')
		return false;
	len--;
	for (size_t k = 0; k < len; k++) {
		if (s[k] < 0x20 || s[k] > 0x7e)
			return false;
	}
	while (i < len) {
		struct pair *p;
		size_t kn = 0;

		if (out->n == PAIRS_MAX)
			return false;
		p = &out->pairs[out->n++];
		memset(p, 0, sizeof *p);
		while (i < len && ((s[i] >= 'a' && s[i] <= 'z') || s[i] == '_')) {
			if (kn + 1 >= sizeof p->key)
				return false;
			p->key[kn++] = s[i++];
		}
		if (kn == 0 || i >= len || s[i] != '=')
			return false;
		i++;
		if (i < len && s[i] == '"') {
			p->quoted = true;
			i++;
			for (;;) {
				char c;
				if (i >= len)
					return false; /* unterminated */
				c = s[i++];
				if (c == '"')
					break;
				if (c == '\\') {
					if (i >= len)
						return false;
					c = s[i++];
					switch (c) {
					case '"': case '\\': break;
					case 'n': c = '\n'; break;
					case 'r': c = '\r'; break;
					case 't': c = '\t'; break;
					case 'x': {
						if (i + 2 > len || hexval(s[i]) < 0 || hexval(s[i + 1]) < 0)
							return false;
						c = (char)(hexval(s[i]) << 4 | hexval(s[i + 1]));
						i += 2;
						break;
					}
					default:
						return false;
					}
				}
				if (p->value_len + 1 >= sizeof p->value)
					return false;
				p->value[p->value_len++] = c;
			}
		} else {
			while (i < len && s[i] != ' ') {
				if (s[i] == '=' || s[i] == '"')
					return false; /* would have needed quotes */
				if (p->value_len + 1 >= sizeof p->value)
					return false;
				p->value[p->value_len++] = s[i++];
			}
			if (p->value_len == 0)
				return false; /* empty must be "" */
		}
		if (i < len) {
			if (s[i] != ' ')
				return false;
			i++;
			if (i == len)
				return false;
		}
	}
	return true;
}

static size_t fmt(char *buf, size_t cap, enum log_level level, const char *msg,
		  const struct log_kv *kvs, size_t n)
{
	size_t len = log_format(buf, cap, T_2026, level, msg, kvs, n);
	assert_true(len > 0 && len <= cap);
	assert_int_equal(buf[len - 1], '\n');
	assert_null(memchr(buf, '\n', len - 1));
	return len;
}

/* Format one string value and return the text after "k=" up to the newline. */
static const char *one(const char *value)
{
	static char buf[LOG_LINE_BYTES_MAX];
	static char out[LOG_LINE_BYTES_MAX];
	const struct log_kv kv = KV_STR("err", value);
	size_t len = fmt(buf, sizeof buf, LOG_LEVEL_INFO, "m", &kv, 1);
	const char *v = strstr(buf, " err=");

	assert_non_null(v);
	v += 5;
	memcpy(out, v, (size_t)(buf + len - 1 - v));
	out[buf + len - 1 - v] = '\0';
	return out;
}

static void test_layout(void **state)
{
	char buf[LOG_LINE_BYTES_MAX];
	size_t len;

	(void)state;
	len = fmt(buf, sizeof buf, LOG_LEVEL_INFO, "server_claimed",
		  (struct log_kv[]){ KV_STR("server_id", "abc"), KV_STR("remote", "127.0.0.1") }, 2);
	buf[len] = '\0'; /* log_format writes no NUL */
	assert_string_equal(buf, "time=2026-11-23T10:00:00.123Z level=INFO msg=server_claimed "
				 "server_id=abc remote=127.0.0.1\n");

	buf[fmt(buf, sizeof buf, LOG_LEVEL_WARN, "rate_limited", NULL, 0)] = '\0';
	assert_string_equal(buf, "time=2026-11-23T10:00:00.123Z level=WARN msg=rate_limited\n");

	len = log_format(buf, sizeof buf, 0, LOG_LEVEL_ERROR, "refusing to start: x", NULL, 0);
	buf[len] = '\0';
	assert_string_equal(buf, "time=1970-01-01T00:00:00.000Z level=ERROR msg=\"refusing to start: x\"\n");

	len = log_format(buf, sizeof buf, 951782400999ll, LOG_LEVEL_INFO, "", NULL, 0);
	buf[len] = '\0';
	assert_string_equal(buf, "time=2000-02-29T00:00:00.999Z level=INFO msg=\"\"\n");
}

static void test_plain_values(void **state)
{
	(void)state;
	assert_string_equal(one("abc"), "abc");
	assert_string_equal(one("127.0.0.1:8080"), "127.0.0.1:8080");
	assert_string_equal(one("[::1]:9090"), "[::1]:9090");
	assert_string_equal(one("a/b-c_d.e:f,g;h"), "a/b-c_d.e:f,g;h");
	/* slog does not quote a lone backslash either: unquoted means raw */
	assert_string_equal(one("a\\b"), "a\\b");
	assert_string_equal(one("~!@#$%^&*()+{}|<>?'`"), "~!@#$%^&*()+{}|<>?'`");
}

static void test_quoted_values(void **state)
{
	(void)state;
	assert_string_equal(one(""), "\"\"");
	assert_string_equal(one(NULL), "\"\"");
	assert_string_equal(one("a b"), "\"a b\"");
	assert_string_equal(one("a=b"), "\"a=b\"");
	assert_string_equal(one("="), "\"=\"");
	assert_string_equal(one("say \"hi\""), "\"say \\\"hi\\\"\"");
	assert_string_equal(one("\"a\\b\""), "\"\\\"a\\\\b\\\"\"");
	assert_string_equal(one("line1\nline2"), "\"line1\\nline2\"");
	assert_string_equal(one("cr\rlf"), "\"cr\\rlf\"");
	assert_string_equal(one("tab\there"), "\"tab\\there\"");
	assert_string_equal(one("\x01\x1b[31m"), "\"\\x01\\x1b[31m\"");
	assert_string_equal(one("del\x7f"), "\"del\\x7f\"");
	/* non-ASCII is escaped byte by byte, valid UTF-8 or not: output stays ASCII */
	assert_string_equal(one("caf\xc3\xa9"), "\"caf\\xc3\\xa9\"");
	assert_string_equal(one("\xff\xfe"), "\"\\xff\\xfe\"");
	/* the forging attempts: a value that looks like more fields or another line */
	assert_string_equal(one("x level=ERROR msg=pwned"), "\"x level=ERROR msg=pwned\"");
	assert_string_equal(one("x\ntime=2026-01-01T00:00:00.000Z level=ERROR msg=fake"),
			    "\"x\\ntime=2026-01-01T00:00:00.000Z level=ERROR msg=fake\"");
	assert_string_equal(one("\" injected=1"), "\"\\\" injected=1\"");
}

static void test_bytes_values(void **state)
{
	char buf[LOG_LINE_BYTES_MAX];
	static const char raw[] = { 'a', '\0', 'b' };
	size_t len;

	(void)state;
	len = fmt(buf, sizeof buf, LOG_LEVEL_INFO, "m",
		  (struct log_kv[]){ KV_BYTES("path", raw, sizeof raw), KV_BYTES("to", "xyz", 2),
				     KV_BYTES("from", NULL, 0),
				     KV_SPAN("err", span_make("/v1/client", 10)) }, 4);
	buf[len] = '\0';
	assert_non_null(strstr(buf, " path=\"a\\x00b\" to=xy from=\"\" err=/v1/client\n"));
}

static void test_ints(void **state)
{
	char buf[LOG_LINE_BYTES_MAX];
	size_t len;

	(void)state;
	len = fmt(buf, sizeof buf, LOG_LEVEL_INFO, "m",
		  (struct log_kv[]){ KV_INT("close_code", 4404), KV_INT("from", -1),
				     KV_INT("to", INT64_MIN), KV_UINT("value", UINT64_MAX),
				     KV_UINT("effective_uid", 0) }, 5);
	buf[len] = '\0';
	assert_non_null(strstr(buf, " close_code=4404 from=-1 to=-9223372036854775808 "
				    "value=18446744073709551615 effective_uid=0\n"));
}

static void test_long_values(void **state)
{
	static char v[LOG_VALUE_BYTES_MAX + 100];
	static char want[LOG_VALUE_BYTES_MAX + 8];
	char buf[LOG_LINE_BYTES_MAX];
	struct line l;
	size_t len;

	(void)state;
	/* exactly the limit: untouched and unquoted */
	memset(v, 'a', LOG_VALUE_BYTES_MAX);
	v[LOG_VALUE_BYTES_MAX] = '\0';
	assert_string_equal(one(v), v);

	/* one more: cut to the limit, marked inside the quotes */
	memset(v, 'a', LOG_VALUE_BYTES_MAX + 1);
	v[LOG_VALUE_BYTES_MAX + 1] = '\0';
	want[0] = '"';
	memset(want + 1, 'a', LOG_VALUE_BYTES_MAX);
	memcpy(want + 1 + LOG_VALUE_BYTES_MAX, "...\"", 5);
	assert_string_equal(one(v), want);

	/* the message itself is bounded the same way */
	memset(v, 'm', sizeof v - 1);
	v[sizeof v - 1] = '\0';
	len = fmt(buf, sizeof buf, LOG_LEVEL_INFO, v, (struct log_kv[]){ KV_STR("err", "x") }, 1);
	assert_true(parse_line(buf, len, &l));
	assert_int_equal(l.n, 4);
	assert_int_equal(l.pairs[2].value_len, LOG_VALUE_BYTES_MAX + 3);
	assert_string_equal(l.pairs[3].value, "x");
}

/* A line longer than the buffer is cut, never overrun, and still ends in exactly one
 * newline; every field that fitted whole parses back unchanged. */
static void test_line_bound(void **state)
{
	static char v[LOG_VALUE_BYTES_MAX];
	char small[64], buf[LOG_LINE_BYTES_MAX + 16];
	struct log_kv kvs[8];
	size_t len;

	(void)state;
	memset(v, 'v', sizeof v - 1);
	for (size_t i = 0; i < 8; i++)
		kvs[i] = KV_STR("err", v);
	memset(buf, 0x55, sizeof buf);
	len = fmt(buf, LOG_LINE_BYTES_MAX, LOG_LEVEL_INFO, "m", kvs, 8);
	/* fields that do not fit whole are dropped, so the line may end short of the cap */
	assert_true(len <= LOG_LINE_BYTES_MAX);
	assert_int_equal(buf[len - 1], '\n');
	for (size_t i = LOG_LINE_BYTES_MAX; i < sizeof buf; i++)
		assert_int_equal((uint8_t)buf[i], 0x55);
	/* fields 1..3 are whole: "time level msg" + 3 x (" err=" + 511) < 2047 */
	char *p = buf;
	for (int i = 0; i < 3; i++) {
		p = strstr(p + 1, " err=");
		assert_non_null(p);
		assert_int_equal(strspn(p + 5, "v"), sizeof v - 1);
	}

	len = fmt(small, sizeof small, LOG_LEVEL_ERROR, "refusing to start: something long", kvs, 8);
	assert_true(len <= sizeof small);
	assert_int_equal(small[len - 1], '\n');
}

/* Regression: the line-level cut used to happen mid-field, so a quoted value near the
 * end lost its closing quote and could end in half an escape ("\x0"). A single 512-byte value
 * of control bytes is enough, because each byte escapes to 4. Skipped until fixed, so it
 * shows in every run and turns into a passing test by itself. */
static void test_line_cut_keeps_fields_whole(void **state)
{
	static char v[LOG_VALUE_BYTES_MAX + 1];
	char buf[LOG_LINE_BYTES_MAX];
	struct line l;
	size_t len;

	(void)state;
	memset(v, 0x01, LOG_VALUE_BYTES_MAX);
	len = fmt(buf, sizeof buf, LOG_LEVEL_INFO, "m",
		  (struct log_kv[]){ KV_STR("err", v), KV_STR("path", "after") }, 2);
	if (!parse_line(buf, len, &l)) {
		fail_msg("log_format cut a field in half (len %zu, ends \"%.12s\")", len, buf + len - 13);
	}
}

static uint64_t rng_state = FUZZ_SEED;

static uint64_t rng(void)
{
	/* xorshift64*: reproducible, no libc rand state */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

/* Every value, whatever its bytes, comes back as exactly the fields that went in. */
static void test_roundtrip_fuzz(void **state)
{
	static const char *const keys[] = { "err", "path", "remote", "server_id", "device_name" };
	static const char interesting[] = { ' ', '=', '"', '\\', '\n', '\r', '\t', '\0', 0x7f,
					    (char)0x80, (char)0xc3, (char)0xff, 'k', 'x', '1' };
	static char values[4][FUZZ_VALUE_BYTES_MAX];
	char buf[LOG_LINE_BYTES_MAX];
	struct log_kv kvs[4];
	size_t lens[4];
	struct line l;

	(void)state;
	for (int round = 0; round < FUZZ_ROUNDS; round++) {
		size_t n = (size_t)(rng() % 4) + 1;
		for (size_t i = 0; i < n; i++) {
			lens[i] = (size_t)(rng() % FUZZ_VALUE_BYTES_MAX);
			for (size_t b = 0; b < lens[i]; b++) {
				uint64_t r = rng();
				values[i][b] = (r & 1) ? interesting[(r >> 8) % sizeof interesting]
						       : (char)(r >> 16);
			}
			/* sometimes a planted fake field */
			if (lens[i] >= 10 && rng() % 4 == 0)
				memcpy(values[i] + rng() % (lens[i] - 9), " level=X ", 9);
			kvs[i] = KV_BYTES(keys[i], values[i], lens[i]);
		}
		size_t len = fmt(buf, sizeof buf, LOG_LEVEL_WARN, "m", kvs, n);
		if (!parse_line(buf, len, &l))
			fail_msg("round %d: unparsable line: %.*s", round, (int)len, buf);
		assert_int_equal(l.n, 3 + n);
		assert_string_equal(l.pairs[0].key, "time");
		assert_string_equal(l.pairs[1].key, "level");
		assert_string_equal(l.pairs[1].value, "WARN");
		assert_string_equal(l.pairs[2].key, "msg");
		for (size_t i = 0; i < n; i++) {
			const struct pair *p = &l.pairs[3 + i];
			assert_string_equal(p->key, keys[i]);
			assert_int_equal(p->value_len, lens[i]);
			assert_memory_equal(p->value, values[i], lens[i]);
		}
	}
}

static void test_log_event_fd(void **state)
{
	char buf[LOG_LINE_BYTES_MAX];
	int fds[2];
	ssize_t n;
	struct line l;

	(void)state;
	assert_int_equal(pipe(fds), 0);
	log_set_fd(fds[1]);
	LOG_WARN("conn_cap_reached", KV_STR("path", "/v1/server"), KV_STR("remote", "192.0.2.1"));
	LOG_INFO("shutdown complete", KV_INT("close_code", 1001));
	log_set_fd(-1);
	close(fds[1]);
	n = read(fds[0], buf, sizeof buf - 1);
	close(fds[0]);
	assert_true(n > 0);
	buf[n] = '\0';

	char *nl = strchr(buf, '\n');
	assert_non_null(nl);
	assert_true(parse_line(buf, (size_t)(nl - buf) + 1, &l));
	assert_int_equal(l.n, 5);
	assert_string_equal(l.pairs[1].value, "WARN");
	assert_string_equal(l.pairs[2].value, "conn_cap_reached");
	assert_string_equal(l.pairs[3].value, "/v1/server");
	assert_true(parse_line(nl + 1, strlen(nl + 1), &l));
	assert_int_equal(l.n, 4);
	assert_string_equal(l.pairs[2].value, "shutdown complete");
	assert_true(l.pairs[2].quoted);
	assert_string_equal(l.pairs[3].value, "1001");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_layout),
		cmocka_unit_test(test_plain_values),
		cmocka_unit_test(test_quoted_values),
		cmocka_unit_test(test_bytes_values),
		cmocka_unit_test(test_ints),
		cmocka_unit_test(test_long_values),
		cmocka_unit_test(test_line_bound),
		cmocka_unit_test(test_line_cut_keeps_fields_whole),
		cmocka_unit_test(test_roundtrip_fuzz),
		cmocka_unit_test(test_log_event_fd),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
