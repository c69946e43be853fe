/*
 * fuzz_config.c - libFuzzer target for the configuration module's parsers: the command
 * line (config_parse, then config_check), Go durations, listener addresses
 * (core/addr.h and the --metrics-listen rule) and the FCM key check.
 *
 * Input: byte 0 picks the target (value % 4), the rest is its input.
 *   0 command line: the rest split at NUL bytes into arguments (at most FZ_ARGS_MAX);
 *     an argument starting with 0x01 is an environment entry instead (without it).
 *     Byte 0's upper bits pick the CapEff mask and euid given to config_check.
 *   1 duration: the rest as one string.
 *   2 listener address: the rest as one string.
 *   3 FCM key: the rest as one string.
 *
 * Oracles:
 * - config_parse returns OK, HELP or USAGE; a usage error is shaped (exit 2, "err"
 *   then "fix", values NUL-terminated); a parsed config holds only values its flags
 *   allow (positive durations where required, workers <= 1024, strings set). Then
 *   config_check returns OK or a shaped refusal, and the same answer twice (pure);
 * - an accepted duration stays accepted, with the same value, when a "0s" term is
 *   appended, and a leading "1h" adds exactly an hour when it does not overflow;
 * - an accepted address re-rendered as text ("[host]:port", "host:port", ":port")
 *   parses to the same struct; allow_empty_host changes only the missing-host answer;
 *   a refusal leaves *out zeroed; --metrics-listen accepts only loopback addresses
 *   that addr_parse_listen accepts with a host;
 * - an accepted FCM key is valid JSON (json_valid) and a JSON object, parses to a
 *   loaded key, a non-empty email and a token URL core/url.h accepts, and the check
 *   and the parse agree; a refused one leaves the parse's output empty.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/addr.h"
#include "core/url.h"
#include "envelope/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) \
	do { \
		if (!(x)) \
			__builtin_trap(); \
	} while (0)

#define FZ_ARGS_MAX 32
#define FZ_ENV_MARK 0x01
#define FZ_WORKERS_MAX 1024u
#define MS_PER_HOUR 3600000ull
/* Go's time.Duration limit, in whole milliseconds */
#define FZ_DURATION_MS_MAX ((uint64_t)INT64_MAX / 1000000ull)

static const uint64_t fz_caps[] = { 0x0, 0x400, 0x401, UINT64_MAX };
static const uint32_t fz_euids[] = { 1000, 0 };

/* A NUL-terminated heap copy, exact size, so ASan sees any read past the end. */
static char *fz_cstr(const uint8_t *p, size_t n)
{
	char *s = malloc(n + 1);
	if (!s)
		abort();
	memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

static void check_refusal_shape(const struct boot_refusal *r)
{
	CHECK(r->exit_code == CONFIG_EXIT_USAGE);
	CHECK(r->msg != NULL);
	CHECK(r->nfields >= 1 && r->nfields <= BOOT_FIELDS_MAX);
	CHECK(strcmp(r->fields[0].key, "err") == 0);
	for (size_t i = 0; i < r->nfields; i++) {
		CHECK(r->fields[i].key != NULL);
		CHECK(memchr(r->fields[i].value, '\0', sizeof r->fields[i].value) != NULL);
	}
}

static void fuzz_command_line(uint8_t sel, const uint8_t *p, size_t n)
{
	char *args[FZ_ARGS_MAX + 2], *env[FZ_ARGS_MAX + 1];
	int argc = 0, envc = 0;
	size_t start = 0;

	args[argc++] = fz_cstr((const uint8_t *)"pyrycode-relay", 14);
	for (size_t i = 0; i <= n && argc + envc < FZ_ARGS_MAX; i++) {
		if (i < n && p[i] != '\0')
			continue;
		if (i > start && p[start] == FZ_ENV_MARK)
			env[envc++] = fz_cstr(p + start + 1, i - start - 1);
		else if (i > start || i < n)
			args[argc++] = fz_cstr(p + start, i - start);
		start = i + 1;
	}
	args[argc] = NULL;
	env[envc] = NULL;

	struct config cfg;
	struct boot_refusal r;
	int rc = config_parse(&cfg, argc, args, env, &r);
	CHECK(rc == CONFIG_OK || rc == CONFIG_HELP || rc == CONFIG_EXIT_USAGE);
	if (rc == CONFIG_EXIT_USAGE) {
		check_refusal_shape(&r);
		CHECK(r.nfields >= 2 && strcmp(r.fields[1].key, "fix") == 0);
	}
	if (rc == CONFIG_OK) {
		CHECK(cfg.domain && cfg.cert_cache && cfg.insecure_listen && cfg.https_listen &&
		      cfg.http_listen && cfg.metrics_listen);
		CHECK(cfg.workers <= FZ_WORKERS_MAX);
		CHECK(cfg.rate_limit_refill_ms > 0 && cfg.heartbeat_interval_ms > 0 &&
		      cfg.heartbeat_timeout_ms > 0 && cfg.conflict_probe_timeout_ms > 0);
		CHECK(cfg.grace_period_ms <= FZ_DURATION_MS_MAX);

		uint64_t caps = fz_caps[(sel >> 2) % ARRAY_LEN(fz_caps)];
		uint32_t euid = fz_euids[(sel >> 4) % ARRAY_LEN(fz_euids)];
		bool caps_ok = !(sel & 0x40);
		struct boot_refusal r2;
		int c1 = config_check(&cfg, caps, caps_ok, euid, &r);
		int c2 = config_check(&cfg, caps, caps_ok, euid, &r2);
		CHECK(c1 == c2);
		CHECK(c1 == CONFIG_OK || c1 == CONFIG_EXIT_USAGE);
		if (c1 != CONFIG_OK) {
			check_refusal_shape(&r);
			CHECK(strcmp(r.msg, r2.msg) == 0 && r.nfields == r2.nfields);
			for (size_t i = 0; i < r.nfields; i++)
				CHECK(strcmp(r.fields[i].value, r2.fields[i].value) == 0);
		}
	}
	for (int i = 0; i < argc; i++)
		free(args[i]);
	for (int i = 0; i < envc; i++)
		free(env[i]);
}

static void fuzz_duration(const uint8_t *p, size_t n)
{
	char *s = fz_cstr(p, n);
	uint64_t ms, again;

	if (config_parse_duration_ms(s, &ms)) {
		CHECK(ms <= FZ_DURATION_MS_MAX);
		char *longer = malloc(n + 8);
		if (!longer)
			abort();
		snprintf(longer, n + 8, "%s0s", s);
		CHECK(config_parse_duration_ms(longer, &again) && again == ms);
		snprintf(longer, n + 8, "1h%s", s);
		/* "1h" + "0" is "1h0", a bare number after a unit: refused, as in Go */
		if (strcmp(s, "0") != 0 && config_parse_duration_ms(longer, &again))
			CHECK(again == ms + MS_PER_HOUR);
		free(longer);
	}
	free(s);
}

static void check_zeroed(const struct listen_addr *a)
{
	static const struct listen_addr zero;
	CHECK(memcmp(a, &zero, sizeof zero) == 0);
}

static void fuzz_listen(const uint8_t *p, size_t n)
{
	char *s = fz_cstr(p, n);
	struct listen_addr a, b, strict;
	enum addr_error e = addr_parse_listen(s, true, &a);
	enum addr_error es = addr_parse_listen(s, false, &strict);

	CHECK(addr_error_text(e) != NULL && addr_error_text(es) != NULL);
	if (e != ADDR_OK) {
		check_zeroed(&a);
		CHECK(es == e);
		check_zeroed(&strict);
	} else if (a.host[0] == '\0') {
		CHECK(es == ADDR_ERR_MISSING_HOST);
		check_zeroed(&strict);
	} else {
		CHECK(es == ADDR_OK && memcmp(&a, &strict, sizeof a) == 0);
	}
	if (e == ADDR_OK) {
		char text[ADDR_HOST_BYTES + 16];
		CHECK(a.port >= 1);
		CHECK(!a.is_ipv6 || a.host[0] != '\0');
		if (a.is_ipv6)
			snprintf(text, sizeof text, "[%s]:%u", a.host, (unsigned)a.port);
		else
			snprintf(text, sizeof text, "%s:%u", a.host, (unsigned)a.port);
		CHECK(addr_parse_listen(text, true, &b) == ADDR_OK);
		CHECK(memcmp(&a, &b, sizeof a) == 0);
	}

	const char *why = NULL;
	if (config_metrics_listen_valid(s, &why)) {
		CHECK(es == ADDR_OK && addr_is_loopback(&strict));
	} else {
		CHECK(why != NULL);
		CHECK(es != ADDR_OK || !addr_is_loopback(&strict));
	}
	free(s);
}

static void fuzz_fcm(const uint8_t *p, size_t n)
{
	char *s = fz_cstr(p, n);
	size_t len = strlen(s); /* an environment value ends at its first NUL */

	struct config_fcm_credentials c;
	bool ok = config_fcm_credentials_parse(s, &c);
	CHECK(ok == config_fcm_credentials_usable(s));
	if (ok) {
		struct span in = span_make(s, len);
		struct https_url url;
		CHECK(json_valid(in));
		size_t i = json_skip_ws(in, 0);
		CHECK(i < len && s[i] == '{');
		CHECK(c.pkey != NULL && c.client_email[0] != '\0');
		CHECK(url_parse_https(c.token_uri, &url) == NULL);
	} else {
		CHECK(c.pkey == NULL && c.client_email[0] == '\0' && c.token_uri[0] == '\0');
	}
	config_fcm_credentials_free(&c);
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	switch (data[0] % 4) {
	case 0:
		fuzz_command_line(data[0], data + 1, size - 1);
		break;
	case 1:
		fuzz_duration(data + 1, size - 1);
		break;
	case 2:
		fuzz_listen(data + 1, size - 1);
		break;
	default:
		fuzz_fcm(data + 1, size - 1);
		break;
	}
	return 0;
}
