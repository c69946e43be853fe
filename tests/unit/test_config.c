/*
 * test_config.c - command line (Go flag semantics), durations, environment, listener
 * addresses and the boot checks of reference §7.4, one by one and in order. The
 * address parser itself is tested in test_addr.c.
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

#include <openssl/evp.h>

#include "config/config.h"
#include "envelope/json.h"
#include "fcm_keys.h"

#define PROG "pyrycode-relay"
/* argv/envp as NULL-terminated compound literals; ## drops the comma when empty */
#define ARGV(...) ((char *const[]){ PROG, ##__VA_ARGS__, NULL })
#define ENV(...) ((char *const[]){ __VA_ARGS__, NULL })
#define NO_ENV ((char *const[]){ NULL })

#define UID_USER 1000u
#define CAP_NONE 0x0ull
#define CAP_NET_BIND 0x400ull
/* Docker's default set: chown dac_override fowner fsetid kill setgid setuid setpcap
 * net_bind_service net_raw sys_chroot mknod audit_write setfcap */
#define CAP_DOCKER_DEFAULT 0xa80425fbull

static int count(char *const v[])
{
	int n = 0;
	while (v[n])
		n++;
	return n;
}

static int parse(struct config *cfg, struct boot_refusal *r, char *const env[], char *const argv[])
{
	return config_parse(cfg, count(argv), argv, env, r);
}

static const char *field(const struct boot_refusal *r, const char *key)
{
	for (size_t i = 0; i < r->nfields; i++) {
		if (strcmp(r->fields[i].key, key) == 0)
			return r->fields[i].value;
	}
	return NULL;
}

static void assert_contains(const char *hay, const char *needle)
{
	assert_non_null(hay);
	if (!strstr(hay, needle))
		fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

/* Every refusal: exit 2, err first, a fix, keys from the boot allowlist. */
static void assert_refusal_shape(const struct boot_refusal *r)
{
	static const char *const allowed[] = { "err", "fix", "env_var", "reason", "value",
					       "addr", "bypass_env_var", "effective_uid" };
	assert_int_equal(r->exit_code, CONFIG_EXIT_USAGE);
	assert_non_null(r->msg);
	assert_true(r->nfields >= 2);
	assert_string_equal(r->fields[0].key, "err");
	assert_non_null(field(r, "fix"));
	for (size_t i = 0; i < r->nfields; i++) {
		bool ok = false;
		for (size_t k = 0; k < sizeof allowed / sizeof allowed[0]; k++)
			ok |= strcmp(r->fields[i].key, allowed[k]) == 0;
		if (!ok)
			fail_msg("key %s not in the boot allowlist", r->fields[i].key);
		/* only an echoed address may be empty: --https-listen= is refused as "" */
		if (strcmp(r->fields[i].key, "addr") != 0)
			assert_true(r->fields[i].value[0] != '\0');
	}
}

static void expect_usage(char *const argv[], const char *err)
{
	struct config cfg;
	struct boot_refusal r;

	assert_int_equal(parse(&cfg, &r, NO_ENV, argv), CONFIG_EXIT_USAGE);
	assert_refusal_shape(&r);
	assert_string_equal(field(&r, "err"), err);
}

/* parse must succeed; then run the checks as an unprivileged process without caps */
static int check(struct config *cfg, struct boot_refusal *r, char *const env[], char *const argv[])
{
	assert_int_equal(parse(cfg, r, env, argv), CONFIG_OK);
	int rc = config_check(cfg, CAP_NONE, true, UID_USER, r);
	if (rc != CONFIG_OK)
		assert_refusal_shape(r);
	return rc;
}

/* ---- defaults ---- */

static void test_defaults(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	assert_int_equal(parse(&cfg, &r, ENV("HOME=/home/relay"), ARGV()), CONFIG_OK);
	assert_string_equal(cfg.domain, "");
	assert_string_equal(cfg.insecure_listen, "");
	assert_string_equal(cfg.https_listen, ":443");
	assert_string_equal(cfg.http_listen, ":80");
	assert_string_equal(cfg.metrics_listen, "127.0.0.1:9090");
	assert_string_equal(cfg.cert_cache, "/home/relay/.pyrycode-relay/certs");
	assert_false(cfg.trust_x_forwarded_for);
	assert_false(cfg.https_proxy_protocol);
	assert_false(cfg.show_version);
	assert_false(cfg.check_only);
	assert_false(cfg.https_listen_set);
	assert_false(cfg.http_listen_set);
	assert_false(cfg.https_proxy_protocol_set);
	assert_int_equal(cfg.max_connections, CONFIG_MAX_CONNECTIONS_DEFAULT);
	assert_int_equal(cfg.rate_limit_burst, CONFIG_RATE_LIMIT_BURST_DEFAULT);
	assert_int_equal(cfg.rate_limit_refill_ms, CONFIG_RATE_LIMIT_REFILL_MS_DEFAULT);
	assert_int_equal(cfg.grace_period_ms, CONFIG_GRACE_PERIOD_MS_DEFAULT);
	assert_int_equal(cfg.heartbeat_interval_ms, CONFIG_HEARTBEAT_INTERVAL_MS_DEFAULT);
	assert_int_equal(cfg.heartbeat_timeout_ms, CONFIG_HEARTBEAT_TIMEOUT_MS_DEFAULT);
	assert_int_equal(cfg.conflict_probe_timeout_ms, CONFIG_CONFLICT_PROBE_TIMEOUT_MS_DEFAULT);
	assert_int_equal(cfg.workers, 0);
	assert_string_equal(cfg.payload_isa, "auto");
	assert_false(cfg.production);
	assert_false(cfg.single_instance);
	assert_null(cfg.production_env);
	assert_null(cfg.single_instance_env);
	assert_null(cfg.fcm_credentials);
	assert_null(cfg.fly_app_name);
	/* NULL envp is an empty environment */
	assert_int_equal(config_parse(&cfg, 1, ARGV(), NULL, &r), CONFIG_OK);
	assert_string_equal(cfg.cert_cache, ".pyrycode-relay/certs");
	/* argc 0 (execve with an empty argv) is no flags */
	assert_int_equal(config_parse(&cfg, 0, ARGV(), NO_ENV, &r), CONFIG_OK);
}

static void test_cert_cache_default(void **state)
{
	struct config cfg;
	struct boot_refusal r;
	static char long_home[4200];

	(void)state;
	assert_int_equal(parse(&cfg, &r, ENV("HOME=/root"), ARGV()), CONFIG_OK);
	assert_string_equal(cfg.cert_cache, "/root/.pyrycode-relay/certs");
	assert_ptr_equal(cfg.cert_cache, cfg.cert_cache_buf);

	assert_int_equal(parse(&cfg, &r, ENV("USER=x"), ARGV()), CONFIG_OK);
	assert_string_equal(cfg.cert_cache, ".pyrycode-relay/certs");

	assert_int_equal(parse(&cfg, &r, ENV("HOME="), ARGV()), CONFIG_OK);
	assert_string_equal(cfg.cert_cache, ".pyrycode-relay/certs");

	/* the first HOME wins, as with getenv */
	assert_int_equal(parse(&cfg, &r, ENV("HOMEX=/no", "HOME=/a", "HOME=/b"), ARGV()), CONFIG_OK);
	assert_string_equal(cfg.cert_cache, "/a/.pyrycode-relay/certs");

	/* explicit flag wins, and points into argv */
	char *const *argv = ARGV("--cert-cache", "/var/lib/relay/autocert");
	assert_int_equal(parse(&cfg, &r, ENV("HOME=/root"), argv), CONFIG_OK);
	assert_ptr_equal(cfg.cert_cache, argv[2]);

	/* a HOME too long for the buffer is refused, not silently replaced */
	memcpy(long_home, "HOME=/", 6);
	memset(long_home + 6, 'h', sizeof long_home - 7);
	long_home[sizeof long_home - 1] = '\0';
	assert_int_equal(parse(&cfg, &r, ENV(long_home), ARGV()), CONFIG_EXIT_USAGE);
	assert_refusal_shape(&r);
	assert_contains(field(&r, "err"), "$HOME");
	assert_contains(field(&r, "fix"), "--cert-cache");
	assert_int_equal(parse(&cfg, &r, ENV(long_home), ARGV("-cert-cache=/x")), CONFIG_OK);
	assert_string_equal(cfg.cert_cache, "/x");
}

/* ---- flag syntax ---- */

static void test_flag_forms(void **state)
{
	struct config cfg;
	struct boot_refusal r;
	char *const *forms[] = {
		ARGV("-domain", "example.com"),
		ARGV("--domain", "example.com"),
		ARGV("-domain=example.com"),
		ARGV("--domain=example.com"),
		ARGV("--domain", "first", "--domain=example.com"), /* last wins */
	};

	(void)state;
	for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
		assert_int_equal(parse(&cfg, &r, NO_ENV, forms[i]), CONFIG_OK);
		assert_string_equal(cfg.domain, "example.com");
	}
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--domain=")), CONFIG_OK);
	assert_string_equal(cfg.domain, "");
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--domain=a=b")), CONFIG_OK);
	assert_string_equal(cfg.domain, "a=b");
	/* like Go, "-x v" takes the next argument whatever it looks like */
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--domain", "--insecure-listen")), CONFIG_OK);
	assert_string_equal(cfg.domain, "--insecure-listen");
	assert_string_equal(cfg.insecure_listen, "");
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--metrics-listen=")), CONFIG_OK);
	assert_string_equal(cfg.metrics_listen, "");

	/* every flag of reference §7.1 and ours, spelled as documented */
	assert_int_equal(parse(&cfg, &r, NO_ENV,
			       ARGV("--domain", "d", "--cert-cache", "c", "--insecure-listen", ":1",
				    "--https-listen", ":2", "--http-listen", ":3", "--metrics-listen",
				    "127.0.0.1:4", "--trust-x-forwarded-for", "--https-proxy-protocol",
				    "--max-connections", "5", "--version", "--rate-limit-burst", "6",
				    "--rate-limit-refill", "7s", "--grace-period", "8s",
				    "--heartbeat-interval", "9s", "--heartbeat-timeout", "10s",
				    "--conflict-probe-timeout", "11s", "--workers", "12")),
			 CONFIG_OK);
	assert_string_equal(cfg.domain, "d");
	assert_string_equal(cfg.cert_cache, "c");
	assert_string_equal(cfg.insecure_listen, ":1");
	assert_string_equal(cfg.https_listen, ":2");
	assert_string_equal(cfg.http_listen, ":3");
	assert_string_equal(cfg.metrics_listen, "127.0.0.1:4");
	assert_true(cfg.trust_x_forwarded_for);
	assert_true(cfg.https_proxy_protocol);
	assert_int_equal(cfg.max_connections, 5);
	assert_true(cfg.show_version);
	assert_int_equal(cfg.rate_limit_burst, 6);
	assert_int_equal(cfg.rate_limit_refill_ms, 7000);
	assert_int_equal(cfg.grace_period_ms, 8000);
	assert_int_equal(cfg.heartbeat_interval_ms, 9000);
	assert_int_equal(cfg.heartbeat_timeout_ms, 10000);
	assert_int_equal(cfg.conflict_probe_timeout_ms, 11000);
	assert_int_equal(cfg.workers, 12);
	assert_true(cfg.https_listen_set && cfg.http_listen_set && cfg.https_proxy_protocol_set);
}

static void test_bool_forms(void **state)
{
	struct config cfg;
	struct boot_refusal r;
	static const char *const yes[] = { "1", "t", "T", "TRUE", "true", "True" };
	static const char *const no[] = { "0", "f", "F", "FALSE", "false", "False" };
	char buf[64];

	(void)state;
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("-version")), CONFIG_OK);
	assert_true(cfg.show_version);
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--version")), CONFIG_OK);
	assert_true(cfg.show_version);
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--check", "--insecure-listen", ":1")), CONFIG_OK);
	assert_true(cfg.check_only);
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("-check=false")), CONFIG_OK);
	assert_false(cfg.check_only);
	for (size_t i = 0; i < 6; i++) {
		snprintf(buf, sizeof buf, "--trust-x-forwarded-for=%s", yes[i]);
		assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV(buf)), CONFIG_OK);
		assert_true(cfg.trust_x_forwarded_for);
		snprintf(buf, sizeof buf, "-trust-x-forwarded-for=%s", no[i]);
		assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--trust-x-forwarded-for", buf)), CONFIG_OK);
		assert_false(cfg.trust_x_forwarded_for);
	}
	/* given explicitly, even as false: what step 4 refuses with --insecure-listen */
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--https-proxy-protocol=false")), CONFIG_OK);
	assert_false(cfg.https_proxy_protocol);
	assert_true(cfg.https_proxy_protocol_set);
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--https-listen=:443")), CONFIG_OK);
	assert_true(cfg.https_listen_set);
	assert_false(cfg.http_listen_set);

	expect_usage(ARGV("--version=yes"), "invalid boolean value \"yes\" for -version: parse error");
	expect_usage(ARGV("--version="), "invalid boolean value \"\" for -version: parse error");
	expect_usage(ARGV("--https-proxy-protocol=on"),
		     "invalid boolean value \"on\" for -https-proxy-protocol: parse error");
	/* a bool never takes the next argument, which is then a refused positional */
	expect_usage(ARGV("--trust-x-forwarded-for", "false"),
		     "unexpected positional argument \"false\": every setting is a flag");
}

static void test_flag_errors(void **state)
{
	(void)state;
	expect_usage(ARGV("-foo"), "flag provided but not defined: -foo");
	expect_usage(ARGV("--foo=1"), "flag provided but not defined: -foo");
	expect_usage(ARGV("--Domain", "x"), "flag provided but not defined: -Domain");
	expect_usage(ARGV("--domain"), "flag needs an argument: -domain");
	expect_usage(ARGV("--insecure-listen", ":8080", "-max-connections"),
		     "flag needs an argument: -max-connections");
	expect_usage(ARGV("---domain", "x"), "bad flag syntax: ---domain");
	expect_usage(ARGV("-=x"), "bad flag syntax: -=x");
	expect_usage(ARGV("--=x"), "bad flag syntax: --=x");
	expect_usage(ARGV("foo"), "unexpected positional argument \"foo\": every setting is a flag");
	expect_usage(ARGV("--domain", "x", "foo"),
		     "unexpected positional argument \"foo\": every setting is a flag");
	expect_usage(ARGV("-"), "unexpected positional argument \"-\": every setting is a flag");
	expect_usage(ARGV(""), "unexpected positional argument \"\": every setting is a flag");
	/* after "--" every argument is positional */
	expect_usage(ARGV("--", "--domain", "x"),
		     "unexpected positional argument \"--domain\": every setting is a flag");
	/* the first error wins */
	expect_usage(ARGV("-foo", "-bar"), "flag provided but not defined: -foo");
	expect_usage(ARGV("-foo", "-h"), "flag provided but not defined: -foo");
	/* an argument cannot smuggle a raw newline into the message */
	expect_usage(ARGV("a\nb"), "unexpected positional argument \"a\\nb\": every setting is a flag");
	expect_usage(ARGV("--workers=1\"x"), "invalid value \"1\\\"x\" for flag -workers: parse error");

	struct config cfg;
	struct boot_refusal r;
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--domain", "x", "--")), CONFIG_OK);
	assert_string_equal(cfg.domain, "x");
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--")), CONFIG_OK);
}

static void test_help(void **state)
{
	struct config cfg;
	struct boot_refusal r;
	char *const *helps[] = {
		ARGV("-h"), ARGV("--h"), ARGV("-help"), ARGV("--help"), ARGV("-help=x"),
		ARGV("--domain", "x", "-h", "-foo"),
	};

	(void)state;
	for (size_t i = 0; i < sizeof helps / sizeof helps[0]; i++)
		assert_int_equal(parse(&cfg, &r, NO_ENV, helps[i]), CONFIG_HELP);
}

static void test_numbers(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--max-connections", "250")), CONFIG_OK);
	assert_int_equal(cfg.max_connections, 250);
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--max-connections=007")), CONFIG_OK);
	assert_int_equal(cfg.max_connections, 7);
	/* range is step 5's business: parse takes any uint32 */
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--max-connections=0")), CONFIG_OK);
	assert_int_equal(cfg.max_connections, 0);
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--max-connections=4294967295")), CONFIG_OK);
	assert_int_equal(cfg.max_connections, UINT32_MAX);

	expect_usage(ARGV("--max-connections", "-5"),
		     "invalid value \"-5\" for flag -max-connections: parse error");
	expect_usage(ARGV("--max-connections=+5"),
		     "invalid value \"+5\" for flag -max-connections: parse error");
	expect_usage(ARGV("--max-connections=x"),
		     "invalid value \"x\" for flag -max-connections: parse error");
	expect_usage(ARGV("--max-connections=0x10"),
		     "invalid value \"0x10\" for flag -max-connections: parse error");
	expect_usage(ARGV("--max-connections=1_000"),
		     "invalid value \"1_000\" for flag -max-connections: parse error");
	expect_usage(ARGV("--max-connections= 5"),
		     "invalid value \" 5\" for flag -max-connections: parse error");
	expect_usage(ARGV("--max-connections=5 "),
		     "invalid value \"5 \" for flag -max-connections: parse error");
	expect_usage(ARGV("--max-connections="),
		     "invalid value \"\" for flag -max-connections: parse error");
	expect_usage(ARGV("--max-connections=1.5"),
		     "invalid value \"1.5\" for flag -max-connections: parse error");
	expect_usage(ARGV("--max-connections=4294967296"),
		     "invalid value \"4294967296\" for flag -max-connections: value out of range");
	expect_usage(ARGV("--rate-limit-burst=99999999999999999999999999"),
		     "invalid value \"99999999999999999999999999\" for flag -rate-limit-burst: value out of range");
	expect_usage(ARGV("--rate-limit-burst=18446744073709551616"),
		     "invalid value \"18446744073709551616\" for flag -rate-limit-burst: value out of range");

	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--rate-limit-burst=0")), CONFIG_OK);
	assert_int_equal(cfg.rate_limit_burst, 0);
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--workers=0")), CONFIG_OK);
	assert_int_equal(cfg.workers, 0);
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--workers=256")), CONFIG_OK);
	assert_int_equal(cfg.workers, 256);
	expect_usage(ARGV("--workers=257"), "invalid value \"257\" for flag -workers: must be at most 256");
	expect_usage(ARGV("--workers=-1"), "invalid value \"-1\" for flag -workers: parse error");
}

/* ---- durations ---- */

static void test_durations(void **state)
{
	static const struct {
		const char *s;
		uint64_t ms;
	} ok[] = {
		{ "0", 0 }, { "0s", 0 }, { "30s", 30000 }, { "1m30s", 90000 }, { "250ms", 250 },
		{ "1h", 3600000 }, { "1.5s", 1500 }, { ".5s", 500 }, { "5.s", 5000 },
		{ "1h2m3s4ms", 3723004 }, { "1000us", 1 }, { "1000\xc2\xb5s", 1 },
		{ "1000\xce\xbcs", 1 }, { "999us", 0 }, { "1500000ns", 1 }, { "0.001s", 1 },
		{ "1.0000000000000000000009s", 1000 }, { "2m", 120000 }, { "10s10s", 20000 },
		{ "2562047h", 9223369200000 }, { "9223372036854775807ns", 9223372036854 },
		{ "007s", 7000 }, { "1.25h", 4500000 },
		/* a fraction's digits stop counting once they are worth under a nanosecond:
		 * a long run of zeros once wrapped the scale (and divided by zero) */
		{ "1.000000000000000000000000000000000000000000000000000000000000000000001s", 1000 },
		{ "1h2m3.0000000000000000000000000000000000000000000000000000000000000000000001526s",
		  3723000 },
		{ "0.9999999999999999999999999999999h", 3599999 }, { "0.0000000000000000005h", 0 },
		{ "1.5000000000000000000000000000000000000000000000000000000000000000000000009s", 1500 },
	};
	static const char *const bad[] = {
		"", "s", "1", "10", "-1s", "+1s", "-0", "1x", ".s", ".", "1s2", "1 s", " 1s", "1s ",
		"1e3s", "1.5.5s", "1S", "1sec", "1ms1", "9223372036854775808ns", "2562048h",
		"99999999999999999999s", "5000000000000000h", "1h\xc2", "inf",
	};
	uint64_t ms;

	(void)state;
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		ms = 12345;
		if (!config_parse_duration_ms(ok[i].s, &ms))
			fail_msg("\"%s\" refused", ok[i].s);
		if (ms != ok[i].ms)
			fail_msg("\"%s\" -> %llu, want %llu", ok[i].s, (unsigned long long)ms,
				 (unsigned long long)ok[i].ms);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (config_parse_duration_ms(bad[i], &ms))
			fail_msg("\"%s\" accepted", bad[i]);
	}
}

static void test_duration_flags(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--grace-period", "0")), CONFIG_OK);
	assert_int_equal(cfg.grace_period_ms, 0);
	assert_int_equal(parse(&cfg, &r, NO_ENV,
			       ARGV("--heartbeat-interval=1m30s", "--heartbeat-timeout", "250ms",
				    "--conflict-probe-timeout=1h", "--rate-limit-refill=1.5s")),
			 CONFIG_OK);
	assert_int_equal(cfg.heartbeat_interval_ms, 90000);
	assert_int_equal(cfg.heartbeat_timeout_ms, 250);
	assert_int_equal(cfg.conflict_probe_timeout_ms, 3600000);
	assert_int_equal(cfg.rate_limit_refill_ms, 1500);

	expect_usage(ARGV("--heartbeat-interval=0s"),
		     "invalid value \"0s\" for flag -heartbeat-interval: must be at least 1ms");
	expect_usage(ARGV("--heartbeat-timeout=0"),
		     "invalid value \"0\" for flag -heartbeat-timeout: must be at least 1ms");
	expect_usage(ARGV("--conflict-probe-timeout=500us"),
		     "invalid value \"500us\" for flag -conflict-probe-timeout: must be at least 1ms");
	expect_usage(ARGV("--rate-limit-refill=0ms"),
		     "invalid value \"0ms\" for flag -rate-limit-refill: must be at least 1ms");
	expect_usage(ARGV("--grace-period=30"), "invalid value \"30\" for flag -grace-period: parse error");
	expect_usage(ARGV("--grace-period=-1s"), "invalid value \"-1s\" for flag -grace-period: parse error");
	expect_usage(ARGV("--heartbeat-interval", "x"),
		     "invalid value \"x\" for flag -heartbeat-interval: parse error");
}

static void test_env_capture(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	assert_int_equal(parse(&cfg, &r,
			       ENV("PYRYCODE_RELAY_PRODUCTION=1", "PYRYCODE_RELAY_SINGLE_INSTANCE=true",
				   "FLY_APP_NAME=app", "PYRYCODE_RELAY_FCM_CREDENTIALS={}",
				   "PYRYCODE_RELAY_PRODUCTIONX=0"),
			       ARGV()),
			 CONFIG_OK);
	assert_true(cfg.production);
	assert_string_equal(cfg.production_env, "1");
	assert_false(cfg.single_instance);
	assert_string_equal(cfg.single_instance_env, "true");
	assert_string_equal(cfg.fly_app_name, "app");
	assert_string_equal(cfg.fcm_credentials, "{}");

	/* "PYRYCODE_RELAY_PRODUCTION" without '=' is not the variable */
	assert_int_equal(parse(&cfg, &r, ENV("PYRYCODE_RELAY_PRODUCTION"), ARGV()), CONFIG_OK);
	assert_null(cfg.production_env);
	assert_int_equal(parse(&cfg, &r, ENV("PYRYCODE_RELAY_PRODUCTION="), ARGV()), CONFIG_OK);
	assert_string_equal(cfg.production_env, "");
	assert_false(cfg.production);
}

/* ---- boot checks ---- */

static void test_check_ok(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--insecure-listen", "127.0.0.1:8080")), CONFIG_OK);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--insecure-listen", ":8080")), CONFIG_OK);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "relay.example.com")), CONFIG_OK);
	/* production argv of the reference (§7.1) */
	assert_int_equal(check(&cfg, &r,
			       ENV("PYRYCODE_RELAY_PRODUCTION=1", "PYRYCODE_RELAY_SINGLE_INSTANCE=1",
				   "FLY_APP_NAME=pyrycode-relay"),
			       ARGV("--domain", "pyrycode-relay.pyryco.de", "--cert-cache",
				    "/var/lib/relay/autocert", "--http-listen=:8080", "--https-listen=:8443",
				    "--https-proxy-protocol")),
			 CONFIG_OK);
	/* insecure mode ignores --domain and the (unset) autocert listeners */
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--insecure-listen", ":1")),
			 CONFIG_OK);
	/* metrics off */
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--insecure-listen", ":8080", "--metrics-listen=")),
			 CONFIG_OK);
	/* allowed capability */
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--domain", "d")), CONFIG_OK);
	assert_int_equal(config_check(&cfg, CAP_NET_BIND, true, UID_USER, &r), CONFIG_OK);
	/* root is fine outside production */
	assert_int_equal(config_check(&cfg, CAP_NONE, true, 0, &r), CONFIG_OK);
	assert_int_equal(r.exit_code, CONFIG_OK);
	assert_int_equal(r.nfields, 0);
}

static void test_check_no_mode(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV()), CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg,
			    "either --domain (for autocert) or --insecure-listen (for behind-proxy mode) must be set");
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain=", "--insecure-listen=")),
			 CONFIG_EXIT_USAGE);
}

static void test_check_insecure_exclusive(void **state)
{
	struct config cfg;
	struct boot_refusal r;
	static const char msg[] = "refusing to start: --insecure-listen is mutually exclusive with "
				  "--http-listen / --https-listen / --https-proxy-protocol";
	char *const *bad[] = {
		ARGV("--insecure-listen", ":8080", "--https-listen", ":443"),
		ARGV("--insecure-listen", ":8080", "--http-listen=:80"),
		ARGV("--insecure-listen", ":8080", "--https-proxy-protocol"),
		ARGV("--insecure-listen", ":8080", "--https-proxy-protocol=false"),
	};

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(check(&cfg, &r, NO_ENV, bad[i]), CONFIG_EXIT_USAGE);
		assert_string_equal(r.msg, msg);
	}
	assert_int_equal(check(&cfg, &r, NO_ENV,
			       ARGV("--insecure-listen", ":8080", "--http-listen=:80",
				    "--https-proxy-protocol")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(field(&r, "err"),
			    "relay: --insecure-listen given with --http-listen --https-proxy-protocol");
	/* the same flags are fine in autocert mode */
	assert_int_equal(check(&cfg, &r, NO_ENV,
			       ARGV("--domain", "d", "--https-listen", ":443", "--http-listen=:80",
				    "--https-proxy-protocol=false")),
			 CONFIG_OK);
}

static void test_check_max_connections(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--max-connections", "0")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, "refusing to start: invalid --max-connections");
	assert_string_equal(field(&r, "err"), "max-connections 0: relay: connection cap must be positive");
	assert_string_equal(field(&r, "value"), "0");
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--max-connections", "16000001")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, "refusing to start: invalid --max-connections");
	assert_string_equal(field(&r, "value"), "16000001");
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--max-connections", "16000000")),
			 CONFIG_OK);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--max-connections", "1")),
			 CONFIG_OK);
}

static void test_check_payload_isa(void **state)
{
	struct config cfg;
	struct boot_refusal r;
	enum simd_level level, most = simd_detect();

	(void)state;
	/* the names, and auto as the widest the CPU has */
	assert_true(config_payload_isa("auto", &level));
	assert_int_equal(level, most);
	assert_true(config_payload_isa("word", &level));
	assert_int_equal(level, SIMD_WORD);
	assert_true(config_payload_isa("sse2", &level));
	assert_int_equal(level, SIMD_SSE2);
	assert_true(config_payload_isa("avx2", &level));
	assert_int_equal(level, SIMD_AVX2);
	assert_false(config_payload_isa("AVX2", &level));
	assert_false(config_payload_isa("", &level));
	assert_false(config_payload_isa("avx512", &level));

	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d")), CONFIG_OK);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--payload-isa", "word")), CONFIG_OK);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--payload-isa=auto")), CONFIG_OK);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--payload-isa", "avx512")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, "refusing to start: invalid --payload-isa");
	assert_string_equal(field(&r, "err"), "relay: --payload-isa \"avx512\": not auto, avx2, sse2 or word");
	assert_string_equal(field(&r, "value"), "avx512");
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--payload-isa=")), CONFIG_EXIT_USAGE);
	assert_string_equal(field(&r, "err"), "relay: --payload-isa \"\": not auto, avx2, sse2 or word");
	/* a level the CPU lacks is refused, naming what it has; one it has is taken */
	static char word[] = "word", sse2[] = "sse2", avx2[] = "avx2";
	char *const names[] = { word, sse2, avx2 };
	for (enum simd_level l = SIMD_WORD; l <= SIMD_AVX2; l++) {
		int rc = check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--payload-isa", names[l]));
		if (l <= most) {
			assert_int_equal(rc, CONFIG_OK);
			continue;
		}
		assert_int_equal(rc, CONFIG_EXIT_USAGE);
		assert_contains(field(&r, "err"), "this CPU or build has at most");
		assert_contains(field(&r, "err"), simd_name(most));
	}
}

static void test_max_connections_per_ip(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	/* the default follows --max-connections: a tenth, at least 16, at most 1000, never above it */
	assert_int_equal(config_per_ip_default(CONFIG_MAX_CONNECTIONS_DEFAULT), 1000);
	assert_int_equal(config_per_ip_default(5000), 500);
	assert_int_equal(config_per_ip_default(40), 16);
	assert_int_equal(config_per_ip_default(10), 10);
	assert_int_equal(config_per_ip_default(1), 1);
	assert_int_equal(config_per_ip_default(CONFIG_MAX_CONNECTIONS_LIMIT), 1000);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d")), CONFIG_OK);
	assert_int_equal(cfg.max_connections_per_ip, 1000);
	assert_false(cfg.max_connections_per_ip_set);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--max-connections", "300")), CONFIG_OK);
	assert_int_equal(cfg.max_connections_per_ip, 30);
	/* given: as given (0 is off; above --max-connections just never binds) */
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--max-connections-per-ip", "0")), CONFIG_OK);
	assert_int_equal(cfg.max_connections_per_ip, 0);
	assert_true(cfg.max_connections_per_ip_set);
	assert_int_equal(check(&cfg, &r, NO_ENV,
			       ARGV("--domain", "d", "--max-connections", "5", "--max-connections-per-ip=7")),
			 CONFIG_OK);
	assert_int_equal(cfg.max_connections_per_ip, 7);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--max-connections-per-ip", "16000000")),
			 CONFIG_OK);
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--max-connections-per-ip", "16000001")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, "refusing to start: invalid --max-connections-per-ip");
	assert_string_equal(field(&r, "value"), "16000001");
	expect_usage(ARGV("--max-connections-per-ip", "-1"),
		     "invalid value \"-1\" for flag -max-connections-per-ip: parse error");
}

static void test_check_env_one_or_unset(void **state)
{
	static const char *const vars[] = { "PYRYCODE_RELAY_PRODUCTION", "PYRYCODE_RELAY_SINGLE_INSTANCE",
					    "PYRYCODE_RELAY_HANDOVER_NO_SESSIONS" };
	static const struct {
		const char *value;
		const char *shown;
	} bad[] = {
		{ "", "\"\"" }, { "true", "\"true\"" }, { "0", "\"0\"" }, { " 1", "\" 1\"" },
		{ "1 ", "\"1 \"" }, { "yes", "\"yes\"" }, { "01", "\"01\"" }, { "1\n", "\"1\\n\"" },
	};
	struct config cfg;
	struct boot_refusal r;
	char env[128], reason[128], err[256];

	(void)state;
	for (size_t v = 0; v < sizeof vars / sizeof vars[0]; v++) {
		snprintf(env, sizeof env, "%s=1", vars[v]);
		assert_int_equal(check(&cfg, &r, ENV(env), ARGV("--domain", "d")), CONFIG_OK);
		if (v == 2)
			assert_true(cfg.handover_no_sessions);
		for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
			snprintf(env, sizeof env, "%s=%s", vars[v], bad[i].value);
			assert_int_equal(check(&cfg, &r, ENV(env), ARGV("--domain", "d")), CONFIG_EXIT_USAGE);
			assert_string_equal(r.msg, "refusing to start: invalid env-var config");
			assert_string_equal(field(&r, "env_var"), vars[v]);
			snprintf(reason, sizeof reason, "malformed-value: expected \"1\" or unset, got %s",
				 bad[i].shown);
			assert_string_equal(field(&r, "reason"), reason);
			snprintf(err, sizeof err, "relay: invalid env-var config: %s: %s", vars[v], reason);
			assert_string_equal(field(&r, "err"), err);
		}
	}
}

/* A service-account key; the real key material comes from fcm_keys.h. */
#define SA_KEY(type, email, key, extra) \
	"{\"type\":" type ",\"project_id\":\"pyrycode-mobile\",\"private_key_id\":\"abc\"," \
	"\"private_key\":" key ",\"client_email\":" email "," \
	"\"client_id\":\"1\",\"token_uri\":\"https://oauth2.googleapis.com/token\"" extra "}"
#define PEM_OK "\"" TK_RSA_PKCS8_JSON "\""
#define PEM_PKCS1 "\"" TK_RSA_PKCS1_JSON "\""
#define EMAIL_OK "\"relay-secret-marker@pyrycode-mobile.iam.gserviceaccount.com\""
#define TYPE_OK "\"service_account\""
/* the minimal key: the three required members */
#define MIN_KEY(extra) "{\"type\":\"service_account\",\"client_email\":\"a@b\",\"private_key\":" PEM_OK extra "}"

/* Every good key the check accepts; every bad one it refuses without echoing any of
 * it, with the reference's fixed reason. */
static void test_check_env_fcm(void **state)
{
	static const char *const good[] = {
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ""),
		"  \n" SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, "") "\r\n\t ",
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_PKCS1, ""),
		SA_KEY("\"service\\u005faccount\"", EMAIL_OK, PEM_OK, ""),
		/* text around the PEM block, and \/ escapes inside it */
		SA_KEY(TYPE_OK, EMAIL_OK, "\"key follows\\n" TK_RSA_PKCS8_JSON "trailing words\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK,
		       ",\"nested\":{\"a\":[1,-2.5e+3,0,0.1E-2,true,false,null,\"x\\u00e9\\\"\"],\"b\":{}},\"c\":[]"),
		/* encoding/json: keys match case-insensitively, the last duplicate wins, and
		 * null leaves a string field alone */
		"{\"TYPE\":\"service_account\",\"Client_Email\":\"a@b\",\"PRIVATE_KEY\":" PEM_OK "}",
		"{\"type\":\"x\",\"type\":\"service_account\",\"client_email\":\"a@b\",\"private_key\":" PEM_OK "}",
		"{\"type\":\"service_account\",\"type\":null,\"client_email\":\"a@b\",\"private_key\":" PEM_OK "}",
		"{\"typ\\u0065\":\"service_account\",\"client_email\":\"a@b\",\"private_key\":" PEM_OK "}",
		"{\"type\":null,\"type\":\"service_account\",\"client_email\":\"a@b\",\"privat\\u0065_KEY\":" PEM_OK "}",
		/* optional members: absent, null, empty token_uri (the default) */
		MIN_KEY(""),
		MIN_KEY(",\"token_uri\":null,\"private_key_id\":null"),
		MIN_KEY(",\"token_uri\":\"\""),
		MIN_KEY(",\"TOKEN_URI\":\"https://127.0.0.1:8443/token?x=1\""),
		/* valid UTF-8, raw or escaped, anywhere */
		SA_KEY(TYPE_OK, "\"r\xc3\xa9lay@b\"", PEM_OK, ",\"n\xc3\xa9\":\"\xe2\x82\xac \\ud83d\\ude00 \\ud800\""),
	};
	static const char *const bad[] = {
		"", " ", "null", "[]", "{}", "\"service_account\"", "x", "{",
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, "") "x",
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, "") "{}",
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",") ,
		/* type */
		SA_KEY("\"authorized_user\"", EMAIL_OK, PEM_OK, ""),
		SA_KEY("\"Service_Account\"", EMAIL_OK, PEM_OK, ""),
		SA_KEY("\"service_account\\u0000\"", EMAIL_OK, PEM_OK, ""),
		SA_KEY("1", EMAIL_OK, PEM_OK, ""),
		SA_KEY("null", EMAIL_OK, PEM_OK, ""),
		"{\"client_email\":\"a@b\",\"private_key\":" PEM_OK "}",
		/* client_email */
		SA_KEY(TYPE_OK, "\"\"", PEM_OK, ""),
		SA_KEY(TYPE_OK, "null", PEM_OK, ""),
		SA_KEY(TYPE_OK, "[\"a@b\"]", PEM_OK, ""),
		SA_KEY(TYPE_OK, "\"a\\u0000@b\"", PEM_OK, ""),
		"{\"type\":\"service_account\",\"private_key\":" PEM_OK "}",
		/* private_key: missing, empty, not a key, not RSA, encrypted, cut, broken */
		"{\"type\":\"service_account\",\"client_email\":\"a@b\"}",
		SA_KEY(TYPE_OK, EMAIL_OK, "\"\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"" TK_EC_JSON "\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"" TK_ED25519_JSON "\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"" TK_RSA_ENCRYPTED_JSON "\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"-----BEGIN PRIVATE KEY-----\\n\\n-----END PRIVATE KEY-----\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"-----BEGIN PRIVATE KEY-----\\nMIIE\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"-----BEGIN PRIVATE KEY-----\\nMI!E\\n-----END PRIVATE KEY-----\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"-----BEGIN PRIVATE KEY-----\\nMI\\u0000E\\n-----END PRIVATE KEY-----\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"-----END PRIVATE KEY-----\\nMIIE\\n-----BEGIN PRIVATE KEY-----\"", ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "\"" TK_RSA_PKCS8_JSON "\\u0000\"", ""),
		/* token_uri: only an https:// URL the client can use */
		MIN_KEY(",\"token_uri\":\"http://oauth2.googleapis.com/token\""),
		MIN_KEY(",\"token_uri\":\"oauth2.googleapis.com/token\""),
		MIN_KEY(",\"token_uri\":\"https://user:pw@oauth2.googleapis.com/token\""),
		MIN_KEY(",\"token_uri\":\"https:///token\""),
		MIN_KEY(",\"token_uri\":\"https://h/a b\""),
		MIN_KEY(",\"token_uri\":1"),
		/* private_key_id: a string or null */
		MIN_KEY(",\"private_key_id\":7"),
		MIN_KEY(",\"private_key_id\":\"a\\u0000\""),
		/* malformed JSON anywhere refuses the whole value */
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\":01"),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\":1."),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\":-"),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\":tru"),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\":[1,]"),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\":\"\\x41\""),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\":\"\\u12G4\""),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\":\"tab\there\""),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",'n':1"),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\" 1"),
		"{\"type\":\"service_account\",\"type\":\"x\",\"client_email\":\"a@b\",\"private_key\":" PEM_OK "}",
		/* null leaves a member unset; any other non-string type refuses */
		"{\"type\":\"service_account\",\"client_email\":\"a@b\",\"private_key\":null}",
		"{\"type\":null,\"client_email\":\"a@b\",\"private_key\":" PEM_OK "}",
		SA_KEY("true", EMAIL_OK, PEM_OK, ""),
		SA_KEY("{}", EMAIL_OK, PEM_OK, ""),
		SA_KEY(TYPE_OK, "{\"a\":\"b\"}", PEM_OK, ""),
		SA_KEY(TYPE_OK, EMAIL_OK, "[]", ""),
		/* names fold ASCII case only: a Kelvin sign (U+212A) is not a k */
		"{\"type\":\"service_account\",\"client_email\":\"a@b\",\"private_\\u212aey\":" PEM_OK "}",
		/* invalid UTF-8 inside any string refuses the key (Go would take it as U+FFFD) */
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"n\":\"\xff\""),
		SA_KEY(TYPE_OK, "\"a\xc3@b\"", PEM_OK, ""),
		SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ",\"\xed\xa0\x80\":1"),
	};
	struct config cfg;
	struct boot_refusal r;
	static char env[8192], deep[2 * JSON_DEPTH_MAX + 2048];

	(void)state;
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		snprintf(env, sizeof env, "PYRYCODE_RELAY_FCM_CREDENTIALS=%s", good[i]);
		if (check(&cfg, &r, ENV(env), ARGV("--domain", "d")) != CONFIG_OK)
			fail_msg("good key %zu refused: %s", i, good[i]);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		snprintf(env, sizeof env, "PYRYCODE_RELAY_FCM_CREDENTIALS=%s", bad[i]);
		if (check(&cfg, &r, ENV(env), ARGV("--domain", "d")) != CONFIG_EXIT_USAGE)
			fail_msg("bad key %zu accepted: %s", i, bad[i]);
		assert_string_equal(r.msg, "refusing to start: invalid env-var config");
		assert_string_equal(field(&r, "env_var"), "PYRYCODE_RELAY_FCM_CREDENTIALS");
		assert_string_equal(field(&r, "reason"), "not a service-account JSON key (value withheld)");
		assert_string_equal(field(&r, "err"),
				    "relay: invalid env-var config: PYRYCODE_RELAY_FCM_CREDENTIALS: "
				    "not a service-account JSON key (value withheld)");
		/* nothing of the value leaks into any field */
		for (size_t f = 0; f < r.nfields; f++) {
			assert_null(strstr(r.fields[f].value, "marker"));
			assert_null(strstr(r.fields[f].value, "MII"));
		}
	}

	/* nesting is bounded by the JSON scanner's one limit, over the whole document:
	 * JSON_DEPTH_MAX containers, the key's own object included, and not one more */
	for (uint32_t extra = 0; extra <= 1; extra++) {
		uint32_t arrays = JSON_DEPTH_MAX - 1 + extra;
		size_t n = (size_t)snprintf(deep, sizeof deep, "PYRYCODE_RELAY_FCM_CREDENTIALS={\"x\":");
		memset(deep + n, '[', arrays);
		n += arrays;
		memset(deep + n, ']', arrays);
		n += arrays;
		snprintf(deep + n, sizeof deep - n, ",\"type\":\"service_account\",\"client_email\":\"a@b\","
			 "\"private_key\":" PEM_OK "}");
		assert_int_equal(check(&cfg, &r, ENV(deep), ARGV("--domain", "d")),
				 extra ? CONFIG_EXIT_USAGE : CONFIG_OK);
	}
	/* unterminated deep input is refused, not a stack overflow */
	memset(deep, '[', sizeof deep - 1);
	memcpy(deep, "PYRYCODE_RELAY_FCM_CREDENTIALS={\"x\":", 36);
	deep[sizeof deep - 1] = '\0';
	assert_int_equal(check(&cfg, &r, ENV(deep), ARGV("--domain", "d")), CONFIG_EXIT_USAGE);

	/* the private key decodes into a fixed buffer: one byte short of it fits (the
	 * key, then spaces after its PEM block) */
	for (size_t extra = 0; extra <= 1; extra++) {
		static const char key_head[] = "PYRYCODE_RELAY_FCM_CREDENTIALS={\"type\":\"service_account\","
					       "\"client_email\":\"a@b\",\"private_key\":\"" TK_RSA_PKCS8_JSON;
		size_t key_len = CONFIG_FCM_PRIVATE_KEY_BYTES_MAX - 1 + extra;
		size_t pem_len = strlen(TK_RSA_PKCS8_PEM);
		size_t n = strlen(key_head);
		memcpy(deep, key_head, n);
		memset(deep + n, ' ', key_len - pem_len);
		n += key_len - pem_len;
		memcpy(deep + n, "\"}", 3);
		assert_int_equal(check(&cfg, &r, ENV(deep), ARGV("--domain", "d")),
				 extra ? CONFIG_EXIT_USAGE : CONFIG_OK);
	}
}

/* What the sender gets: the key, the email, the key id and the token URL, decoded. */
static void test_fcm_credentials_parse(void **state)
{
	struct config_fcm_credentials c;
	(void)state;

	assert_true(config_fcm_credentials_parse(SA_KEY(TYPE_OK, EMAIL_OK, PEM_OK, ""), &c));
	assert_non_null(c.pkey);
	assert_string_equal(c.client_email, "relay-secret-marker@pyrycode-mobile.iam.gserviceaccount.com");
	assert_string_equal(c.private_key_id, "abc");
	assert_string_equal(c.token_uri, "https://oauth2.googleapis.com/token");
	config_fcm_credentials_free(&c);
	assert_null(c.pkey);
	assert_string_equal(c.client_email, "");

	/* defaults, escapes decoded, the last duplicate wins */
	assert_true(config_fcm_credentials_parse(
		"{\"type\":\"service_account\",\"client_email\":\"a\\u0040b\",\"private_key\":" PEM_PKCS1
		",\"token_uri\":\"https://x/1\",\"token_uri\":\"https:\\/\\/127.0.0.1:9\\/t\"}", &c));
	assert_string_equal(c.client_email, "a@b");
	assert_string_equal(c.private_key_id, "");
	assert_string_equal(c.token_uri, "https://127.0.0.1:9/t");
	config_fcm_credentials_free(&c);
	assert_true(config_fcm_credentials_parse(MIN_KEY(",\"token_uri\":\"\""), &c));
	assert_string_equal(c.token_uri, CONFIG_FCM_TOKEN_URI_DEFAULT);
	config_fcm_credentials_free(&c);

	/* a refusal leaves nothing behind */
	memset(&c, 0x5a, sizeof c);
	assert_false(config_fcm_credentials_parse(MIN_KEY(",\"token_uri\":\"http://x\""), &c));
	assert_null(c.pkey);
	assert_string_equal(c.client_email, "");
	config_fcm_credentials_free(&c); /* safe on a refused one */

	/* the members' buffers: one byte short fits, a full one refuses */
	static char key[2 * CONFIG_FCM_TOKEN_URI_BYTES_MAX + 2048];
	char member[CONFIG_FCM_TOKEN_URI_BYTES_MAX + 1];
	const struct {
		const char *name, *prefix;
		size_t cap;
	} limits[] = {
		{ "client_email", "a@", CONFIG_FCM_EMAIL_BYTES_MAX },
		{ "private_key_id", "k", CONFIG_FCM_KEY_ID_BYTES_MAX },
		{ "token_uri", "https://h/", CONFIG_FCM_TOKEN_URI_BYTES_MAX },
	};
	for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
		for (size_t extra = 0; extra <= 1; extra++) {
			size_t len = limits[i].cap - 1 + extra, pre = strlen(limits[i].prefix);
			memcpy(member, limits[i].prefix, pre);
			memset(member + pre, 'x', len - pre);
			member[len] = '\0';
			snprintf(key, sizeof key,
				 "{\"type\":\"service_account\",\"client_email\":\"a@b\",\"private_key\":" PEM_OK
				 ",\"%s\":\"%s\"}", limits[i].name, member);
			bool ok = config_fcm_credentials_parse(key, &c);
			config_fcm_credentials_free(&c);
			if (ok != !extra)
				fail_msg("%s of %zu bytes: %s", limits[i].name, len, ok ? "accepted" : "refused");
		}
	}
}

/* The key bytes alone: PEM (any label, first block) or raw DER; PKCS#8, then PKCS#1;
 * RSA only. */
static void test_fcm_rsa_key(void **state)
{
	(void)state;
	const struct {
		const char *what;
		const void *bytes;
		size_t len;
		bool ok;
	} cases[] = {
		{ "PKCS#8 PEM", TK_RSA_PKCS8_PEM, strlen(TK_RSA_PKCS8_PEM), true },
		{ "PKCS#1 PEM", TK_RSA_PKCS1_PEM, strlen(TK_RSA_PKCS1_PEM), true },
		{ "PKCS#8 DER", tk_rsa_pkcs8_der, sizeof tk_rsa_pkcs8_der, true },
		{ "PKCS#1 DER", tk_rsa_pkcs1_der, sizeof tk_rsa_pkcs1_der, true },
		{ "PKCS#1 DER cut", tk_rsa_pkcs1_der, sizeof tk_rsa_pkcs1_der - 1, false },
		{ "PKCS#8 DER cut", tk_rsa_pkcs8_der, sizeof tk_rsa_pkcs8_der / 2, false },
		{ "EC", TK_EC_PEM, strlen(TK_EC_PEM), false },
		{ "Ed25519", TK_ED25519_PEM, strlen(TK_ED25519_PEM), false },
		{ "encrypted", TK_RSA_ENCRYPTED_PEM, strlen(TK_RSA_ENCRYPTED_PEM), false },
		{ "empty", "", 0, false },
		{ "text", "not a key", 9, false },
		/* the first block counts, as pem.Decode: an EC key first hides the RSA one */
		{ "EC then RSA", TK_EC_PEM TK_RSA_PKCS8_PEM, strlen(TK_EC_PEM TK_RSA_PKCS8_PEM), false },
		{ "RSA then EC", TK_RSA_PKCS1_PEM TK_EC_PEM, strlen(TK_RSA_PKCS1_PEM TK_EC_PEM), true },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct evp_pkey_st *k = config_fcm_parse_rsa_key(cases[i].bytes, cases[i].len);
		if ((k != NULL) != cases[i].ok)
			fail_msg("%s: %s", cases[i].what, k ? "accepted" : "refused");
		EVP_PKEY_free(k);
	}
	/* a PKCS#1 key in a block with any label, as Go's pem.Decode takes it */
	static const char relabelled[] = "-----BEGIN SOMETHING-----\n" TK_RSA_PKCS1_BODY "-----END SOMETHING-----\n";
	struct evp_pkey_st *k = config_fcm_parse_rsa_key((const uint8_t *)relabelled, strlen(relabelled));
	assert_non_null(k);
	EVP_PKEY_free(k);
	assert_null(config_fcm_parse_rsa_key((const uint8_t *)"x", CONFIG_FCM_PRIVATE_KEY_BYTES_MAX + 1));
}

static void test_check_env_order(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	/* only the first failing variable is reported, in registry order */
	assert_int_equal(check(&cfg, &r,
			       ENV("PYRYCODE_RELAY_FCM_CREDENTIALS=x", "PYRYCODE_RELAY_SINGLE_INSTANCE=0",
				   "PYRYCODE_RELAY_PRODUCTION=true"),
			       ARGV("--domain", "d")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(field(&r, "env_var"), "PYRYCODE_RELAY_PRODUCTION");
	assert_int_equal(check(&cfg, &r,
			       ENV("PYRYCODE_RELAY_FCM_CREDENTIALS=x", "PYRYCODE_RELAY_SINGLE_INSTANCE=0"),
			       ARGV("--domain", "d")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(field(&r, "env_var"), "PYRYCODE_RELAY_SINGLE_INSTANCE");
	/* unregistered variables are ignored */
	assert_int_equal(check(&cfg, &r, ENV("PYRYCODE_RELAY_OTHER=x", "PYRYCODE_RELAY_PRODUCTIO=x"),
			       ARGV("--domain", "d")),
			 CONFIG_OK);
}

static void test_check_single_instance(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	assert_int_equal(check(&cfg, &r, ENV("FLY_APP_NAME=pyrycode-relay"), ARGV("--domain", "d")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, "refusing to start: multi-instance deploy detected");
	assert_string_equal(field(&r, "err"),
			    "relay: multi-instance deploy detected; set PYRYCODE_RELAY_SINGLE_INSTANCE=1 to bypass");
	assert_string_equal(field(&r, "bypass_env_var"), "PYRYCODE_RELAY_SINGLE_INSTANCE");
	assert_string_equal(r.fields[1].key, "bypass_env_var");
	assert_string_equal(r.fields[2].key, "fix");
	assert_int_equal(check(&cfg, &r, ENV("FLY_APP_NAME=x", "PYRYCODE_RELAY_SINGLE_INSTANCE=1"),
			       ARGV("--domain", "d")),
			 CONFIG_OK);
	assert_int_equal(check(&cfg, &r, ENV("FLY_APP_NAME="), ARGV("--domain", "d")), CONFIG_OK);
	assert_int_equal(check(&cfg, &r, ENV("PYRYCODE_RELAY_SINGLE_INSTANCE=1"), ARGV("--domain", "d")),
			 CONFIG_OK);
}

static void test_check_production(void **state)
{
	struct config cfg;
	struct boot_refusal r;

	(void)state;
	assert_int_equal(check(&cfg, &r, ENV("PYRYCODE_RELAY_PRODUCTION=1"),
			       ARGV("--insecure-listen", ":8080")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, "refusing to start: production-mode misconfiguration");
	assert_string_equal(field(&r, "err"),
			    "relay: --insecure-listen is set with PYRYCODE_RELAY_PRODUCTION=1; refusing to start");
	assert_string_equal(field(&r, "env_var"), "PYRYCODE_RELAY_PRODUCTION");
	assert_null(field(&r, "effective_uid"));

	assert_int_equal(parse(&cfg, &r, ENV("PYRYCODE_RELAY_PRODUCTION=1"), ARGV("--domain", "d")),
			 CONFIG_OK);
	assert_int_equal(config_check(&cfg, CAP_NONE, true, UID_USER, &r), CONFIG_OK);
	assert_int_equal(config_check(&cfg, CAP_NONE, true, 0, &r), CONFIG_EXIT_USAGE);
	assert_refusal_shape(&r);
	assert_string_equal(r.msg, "refusing to start: production-mode misconfiguration");
	assert_string_equal(field(&r, "err"),
			    "relay: effective uid is 0 with PYRYCODE_RELAY_PRODUCTION=1; refusing to start");
	assert_string_equal(field(&r, "env_var"), "PYRYCODE_RELAY_PRODUCTION");
	assert_string_equal(field(&r, "effective_uid"), "0");
}

static void test_check_caps(void **state)
{
	struct config cfg;
	struct boot_refusal r;
	static const char msg[] = "refusing to start: unexpected Linux capabilities";
	static const char allow[] = "; allowlist: [CAP_NET_BIND_SERVICE (bit 10)]";

	(void)state;
	assert_int_equal(parse(&cfg, &r, NO_ENV, ARGV("--domain", "d")), CONFIG_OK);
	assert_int_equal(config_check(&cfg, 0x0, true, UID_USER, &r), CONFIG_OK);
	assert_int_equal(config_check(&cfg, 0x400, true, UID_USER, &r), CONFIG_OK);

	assert_int_equal(config_check(&cfg, 0x401, true, UID_USER, &r), CONFIG_EXIT_USAGE);
	assert_refusal_shape(&r);
	assert_string_equal(r.msg, msg);
	assert_string_equal(field(&r, "err"),
			    "relay: process has unexpected effective Linux capabilities: CAP_CHOWN (bit 0)"
			    "; allowlist: [CAP_NET_BIND_SERVICE (bit 10)]");
	assert_string_equal(field(&r, "value"), "0000000000000401");
	assert_contains(field(&r, "fix"), "NET_BIND_SERVICE");

	assert_int_equal(config_check(&cfg, 1ull << 21 | 1ull << 40 | 1ull << 41 | 1ull << 63, true,
				      UID_USER, &r),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(field(&r, "err"),
			    "relay: process has unexpected effective Linux capabilities: CAP_SYS_ADMIN (bit 21), "
			    "CAP_CHECKPOINT_RESTORE (bit 40), bit 41, bit 63"
			    "; allowlist: [CAP_NET_BIND_SERVICE (bit 10)]");

	/* Docker's default set: every offending bit by name, and not the allowed one */
	assert_int_equal(config_check(&cfg, CAP_DOCKER_DEFAULT, true, UID_USER, &r), CONFIG_EXIT_USAGE);
	const char *err = field(&r, "err");
	static const char *const docker[] = {
		"CAP_CHOWN (bit 0)", "CAP_DAC_OVERRIDE (bit 1)", "CAP_FOWNER (bit 3)",
		"CAP_FSETID (bit 4)", "CAP_KILL (bit 5)", "CAP_SETGID (bit 6)", "CAP_SETUID (bit 7)",
		"CAP_SETPCAP (bit 8)", "CAP_NET_RAW (bit 13)", "CAP_SYS_CHROOT (bit 18)",
		"CAP_MKNOD (bit 27)", "CAP_AUDIT_WRITE (bit 29)", "CAP_SETFCAP (bit 31)",
	};
	for (size_t i = 0; i < sizeof docker / sizeof docker[0]; i++)
		assert_contains(err, docker[i]);
	/* bit 10 is set but allowed: named once, in the allowlist */
	const char *nbs = strstr(err, "CAP_NET_BIND_SERVICE (bit 10)");
	assert_non_null(nbs);
	assert_null(strstr(nbs + 1, "CAP_NET_BIND_SERVICE (bit 10)"));
	assert_ptr_equal(nbs, err + strlen(err) - strlen("CAP_NET_BIND_SERVICE (bit 10)]"));
	assert_null(strstr(err, "more"));
	assert_contains(err, allow);

	/* full root: does not fit a log value; the rest is counted, the mask is in value */
	assert_int_equal(config_check(&cfg, UINT64_MAX, true, UID_USER, &r), CONFIG_EXIT_USAGE);
	err = field(&r, "err");
	assert_true(strlen(err) < BOOT_FIELD_VALUE_BYTES - 1);
	assert_contains(err, "CAP_CHOWN (bit 0), CAP_DAC_OVERRIDE (bit 1)");
	assert_contains(err, " more (see value)");
	assert_true(strlen(err) > strlen(allow));
	assert_string_equal(err + strlen(err) - strlen(allow), allow);
	assert_string_equal(field(&r, "value"), "ffffffffffffffff");
	/* the named bits plus the counted ones are all 63 offending bits */
	unsigned named = 0, more = 0;
	for (const char *p = err; (p = strstr(p, "(bit ")); p++)
		named++;
	const char *m = strstr(err, ", and ");
	assert_non_null(m);
	assert_int_equal(sscanf(m, ", and %u more", &more), 1);
	assert_int_equal(named - 1 + more, 63); /* minus the allowlist's entry */

	/* unreadable CapEff is a refusal too */
	assert_int_equal(config_check(&cfg, 0, false, UID_USER, &r), CONFIG_EXIT_USAGE);
	assert_refusal_shape(&r);
	assert_string_equal(r.msg, msg);
	assert_contains(field(&r, "err"), "/proc/self/status");
}

static void test_metrics_listen(void **state)
{
	static const char *const ok[] = {
		"127.0.0.1:9090", "127.1.2.3:1", "127.255.255.255:65535", "[::1]:9090",
		"[0:0:0:0:0:0:0:1]:9090", "127.0.0.1:09090",
	};
	static const struct {
		const char *addr;
		const char *why;
	} bad[] = {
		{ "localhost:9090", "hostnames are rejected" },
		{ ":9090", "missing host" },
		{ "0.0.0.0:9090", "not a loopback IP" },
		{ "10.0.0.1:9090", "not a loopback IP" },
		{ "128.0.0.1:9090", "not a loopback IP" },
		{ "127.0.0.1:0", "port 0" },
		{ "127.0.0.1:65536", "out of range" },
		{ "127.0.0.1:", "not a decimal number" },
		{ "127.0.0.1", "missing port" },
		{ "[::2]:1", "not a loopback IP" },
		{ "[::]:9090", "not a loopback IP" },
		{ "[::ffff:127.0.0.1]:9090", "not a loopback IP" },
		{ "[::1%lo]:9090", "not an IPv6 literal" },
		{ "[127.0.0.1]:9090", "not an IPv6 literal" },
		{ "::1:9090", "too many colons" },
		{ "127.1:9090", "hostnames are rejected" },
		{ "127.0.0.01:9090", "hostnames are rejected" },
		{ "", "empty" },
	};
	struct config cfg;
	struct boot_refusal r;
	const char *why;
	char flag[128];

	(void)state;
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		why = NULL;
		if (!config_metrics_listen_valid(ok[i], &why))
			fail_msg("%s refused: %s", ok[i], why);
		snprintf(flag, sizeof flag, "--metrics-listen=%s", ok[i]);
		assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", flag)), CONFIG_OK);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		why = NULL;
		if (config_metrics_listen_valid(bad[i].addr, &why))
			fail_msg("%s accepted", bad[i].addr);
		assert_contains(why, bad[i].why);
		if (bad[i].addr[0] == '\0')
			continue; /* empty disables: tested below */
		snprintf(flag, sizeof flag, "--metrics-listen=%s", bad[i].addr);
		assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--insecure-listen", ":8080", flag)),
				 CONFIG_EXIT_USAGE);
		assert_string_equal(r.msg, "refusing to start: invalid --metrics-listen address");
		assert_string_equal(field(&r, "value"), bad[i].addr);
		assert_contains(field(&r, "err"), bad[i].why);
		assert_string_equal(r.fields[1].key, "value");
		assert_string_equal(r.fields[2].key, "fix");
	}
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--metrics-listen", "")), CONFIG_OK);
}

static void test_check_listeners(void **state)
{
	struct config cfg;
	struct boot_refusal r;
	static const char msg[] = "refusing to start: invalid listener address";

	(void)state;
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--insecure-listen", "localhost:8080")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, msg);
	assert_string_equal(field(&r, "addr"), "localhost:8080");
	assert_contains(field(&r, "err"), "relay: parsing listener address \"localhost:8080\": ");
	assert_string_equal(r.fields[1].key, "addr");

	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--insecure-listen", ":0")), CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, msg);
	assert_contains(field(&r, "err"), "port 0 is not permitted");

	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--https-listen", ":https")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, msg);
	assert_string_equal(field(&r, "addr"), ":https");
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--http-listen", ":65536")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(field(&r, "addr"), ":65536");
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--domain", "d", "--https-listen", "")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(r.msg, msg);
	/* https before http */
	assert_int_equal(check(&cfg, &r, NO_ENV,
			       ARGV("--domain", "d", "--http-listen", "x", "--https-listen", "y")),
			 CONFIG_EXIT_USAGE);
	assert_string_equal(field(&r, "addr"), "y");
	/* autocert listeners are not looked at in insecure mode (and not settable there) */
	assert_int_equal(check(&cfg, &r, NO_ENV, ARGV("--insecure-listen", "[::]:8080")), CONFIG_OK);
}

/* The first failing check wins: start with everything wrong, then fix one thing at a
 * time and watch the refusal move down §7.4. */
static void test_check_precedence(void **state)
{
	static const char *const order[] = {
		"either --domain (for autocert) or --insecure-listen (for behind-proxy mode) must be set",
		"refusing to start: --insecure-listen is mutually exclusive with --http-listen / --https-listen / --https-proxy-protocol",
		"refusing to start: invalid --max-connections",
		"refusing to start: invalid env-var config",
		"refusing to start: multi-instance deploy detected",
		"refusing to start: production-mode misconfiguration", /* insecure */
		"refusing to start: production-mode misconfiguration", /* root */
		"refusing to start: unexpected Linux capabilities",
		"refusing to start: invalid --metrics-listen address",
		"refusing to start: invalid listener address",
	};
	struct config cfg;
	struct boot_refusal r;
	uint64_t caps = 0x1;
	uint32_t euid = 0;

	(void)state;
	assert_int_equal(parse(&cfg, &r,
			       ENV("PYRYCODE_RELAY_PRODUCTION=1", "PYRYCODE_RELAY_SINGLE_INSTANCE=yes",
				   "FLY_APP_NAME=app"),
			       ARGV("--max-connections=0", "--https-listen=:443",
				    "--metrics-listen=localhost:9090")),
			 CONFIG_OK);
	for (size_t step = 0; step < sizeof order / sizeof order[0]; step++) {
		assert_int_equal(config_check(&cfg, caps, true, euid, &r), CONFIG_EXIT_USAGE);
		assert_refusal_shape(&r);
		assert_string_equal(r.msg, order[step]);
		switch (step) {
		case 0: cfg.insecure_listen = ":8080"; break;
		case 1: cfg.https_listen_set = false; break;
		case 2: cfg.max_connections = 10; break;
		case 3: cfg.single_instance_env = NULL; break;
		case 4: cfg.fly_app_name = ""; break;
		case 5: cfg.insecure_listen = ""; cfg.domain = "d"; break;
		case 6: euid = UID_USER; break;
		case 7: caps = CAP_NET_BIND; break;
		case 8: cfg.metrics_listen = "[::1]:9090"; cfg.https_listen = ":0"; break;
		case 9: cfg.https_listen = ":443"; break;
		}
	}
	assert_int_equal(config_check(&cfg, caps, true, euid, &r), CONFIG_OK);
}

/* ---- I/O ---- */

static void test_read_cap_eff(void **state)
{
	uint64_t got = 0, want = 0;
	char line[256];
	bool found = false;
	FILE *f;

	(void)state;
	assert_true(config_read_cap_eff(&got));
	f = fopen("/proc/self/status", "r");
	assert_non_null(f);
	while (fgets(line, sizeof line, f)) {
		unsigned long long v;
		if (sscanf(line, "CapEff: %llx", &v) == 1) {
			want = v;
			found = true;
		}
	}
	fclose(f);
	assert_true(found);
	assert_int_equal(got, want);
}

static void test_usage(void **state)
{
	static const char *const expect[] = {
		"--domain FQDN", "--cert-cache DIR", "--insecure-listen ADDR", "--https-listen ADDR",
		"--http-listen ADDR", "--metrics-listen ADDR", "--trust-x-forwarded-for",
		"--https-proxy-protocol", "--max-connections N", "--version", "--rate-limit-burst N",
		"--rate-limit-refill DURATION", "--grace-period DURATION",
		"--heartbeat-interval DURATION", "--heartbeat-timeout DURATION",
		"--conflict-probe-timeout DURATION", "--workers N", "--payload-isa NAME", "--help",
		"(default: :443)", "(default: :80)", "(default: 127.0.0.1:9090)", "(default: 100000)",
		"(default: 20)", "(default: 6s)", "(default: 30s)", "(default: 10s)",
		"(default: $HOME/.pyrycode-relay/certs", "(default: false)", "(default: none)",
		"PYRYCODE_RELAY_PRODUCTION", "PYRYCODE_RELAY_SINGLE_INSTANCE",
		"PYRYCODE_RELAY_FCM_CREDENTIALS", "FLY_APP_NAME", "HOME", "Exit status",
	};
	static char buf[16384];
	int fds[2];
	ssize_t n;
	size_t len = 0;

	(void)state;
	assert_int_equal(pipe(fds), 0);
	config_print_usage(fds[1]);
	close(fds[1]);
	while ((n = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
		len += (size_t)n;
	close(fds[0]);
	buf[len] = '\0';
	for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
		assert_contains(buf, expect[i]);
	/* fits a terminal */
	for (const char *p = buf; *p;) {
		const char *nl = strchr(p, '\n');
		assert_non_null(nl);
		if (nl - p > 90)
			fail_msg("usage line too long: %.*s", (int)(nl - p), p);
		p = nl + 1;
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_cert_cache_default),
		cmocka_unit_test(test_flag_forms),
		cmocka_unit_test(test_bool_forms),
		cmocka_unit_test(test_flag_errors),
		cmocka_unit_test(test_help),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_duration_flags),
		cmocka_unit_test(test_env_capture),
		cmocka_unit_test(test_check_ok),
		cmocka_unit_test(test_check_no_mode),
		cmocka_unit_test(test_check_insecure_exclusive),
		cmocka_unit_test(test_check_max_connections),
		cmocka_unit_test(test_check_payload_isa),
		cmocka_unit_test(test_max_connections_per_ip),
		cmocka_unit_test(test_check_env_one_or_unset),
		cmocka_unit_test(test_check_env_fcm),
		cmocka_unit_test(test_fcm_credentials_parse),
		cmocka_unit_test(test_fcm_rsa_key),
		cmocka_unit_test(test_check_env_order),
		cmocka_unit_test(test_check_single_instance),
		cmocka_unit_test(test_check_production),
		cmocka_unit_test(test_check_caps),
		cmocka_unit_test(test_metrics_listen),
		cmocka_unit_test(test_check_listeners),
		cmocka_unit_test(test_check_precedence),
		cmocka_unit_test(test_read_cap_eff),
		cmocka_unit_test(test_usage),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
