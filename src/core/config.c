/*
 * config.c - command line (Go flag semantics), environment and the boot checks of
 * reference §7.4, §7.3, §1.5 and §1.6.
 *
 * Everything here is a pure function of argv, envp and the numbers main reads from the
 * kernel, except config_read_cap_eff and config_print_usage. A refusal is data (a
 * message, fields, an exit code) so main logs it with the reference's exact keys and
 * the checks are testable one by one, in order.
 */
#include "core/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define PROGRAM_NAME "pyrycode-relay"
#define CERT_CACHE_SUFFIX "/.pyrycode-relay/certs"
#define CERT_CACHE_RELATIVE ".pyrycode-relay/certs"

#define WORKERS_MAX 1024u

/* Go's time.Duration is int64 nanoseconds: anything longer does not parse there. */
#define DURATION_NS_MAX ((uint64_t)INT64_MAX)
#define NS_PER_US 1000ull
#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define MS_PER_S 1000ull
#define MS_PER_MIN 60000ull
#define MS_PER_HOUR 3600000ull

#define CAP_NET_BIND_SERVICE_BIT 10u
#define CAP_ALLOWED_MASK (1ull << CAP_NET_BIND_SERVICE_BIT)

/* A service-account key is ~2.4 KiB; an RSA-4096 PEM ~3.3 KiB. */
#define FCM_PRIVATE_KEY_BYTES_MAX 16384
#define JSON_DEPTH_MAX 64

#define PROC_STATUS_BYTES_MAX 16384

#define USAGE_BYTES_MAX 12288

/* ---- refusals ---------------------------------------------------------------- */

static void refusal_begin(struct boot_refusal *r, int exit_code, const char *msg)
{
	memset(r, 0, sizeof *r);
	r->exit_code = exit_code;
	r->msg = msg;
}

static void field_add(struct boot_refusal *r, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void field_add(struct boot_refusal *r, const char *key, const char *fmt, ...)
{
	ASSERT(r->nfields < BOOT_FIELDS_MAX);
	struct boot_field *f = &r->fields[r->nfields++];
	va_list ap;

	f->key = key;
	va_start(ap, fmt);
	/* Truncation is acceptable: the logger would cut the value at the same length. */
	(void)vsnprintf(f->value, sizeof f->value, fmt, ap);
	va_end(ap);
}

/* Go's %q, enough for error text: printable ASCII as is, the rest escaped, so an
 * argument never smuggles a newline into a message printed raw on stderr. */
static const char *quote(char *dst, size_t cap, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	ASSERT(cap >= 8);
	dst[n++] = '"';
	for (; *s; s++) {
		uint8_t c = (uint8_t)*s;
		char esc[4];
		size_t len = 0;

		if (c == '"' || c == '\\') {
			esc[len++] = '\\';
			esc[len++] = (char)c;
		} else if (c == '\n') {
			esc[len++] = '\\';
			esc[len++] = 'n';
		} else if (c == '\t') {
			esc[len++] = '\\';
			esc[len++] = 't';
		} else if (c >= 0x20 && c < 0x7f) {
			esc[len++] = (char)c;
		} else {
			esc[len++] = '\\';
			esc[len++] = 'x';
			esc[len++] = hex[c >> 4];
			esc[len++] = hex[c & 15];
		}
		if (n + len + 5 > cap) { /* room for `..."` and NUL */
			memcpy(dst + n, "...", 3);
			n += 3;
			break;
		}
		memcpy(dst + n, esc, len);
		n += len;
	}
	dst[n++] = '"';
	dst[n] = '\0';
	return dst;
}

#define QUOTE_BYTES 160

/* ---- numbers and durations --------------------------------------------------- */

enum num_status { NUM_OK, NUM_SYNTAX, NUM_RANGE };

/* Decimal digits only: no sign, no 0x, no '_' (Go's int flags take all three). */
static enum num_status parse_dec(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	bool range = false;

	if (*s == '\0')
		return NUM_SYNTAX;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return NUM_SYNTAX;
		unsigned d = (unsigned)(*s - '0');
		if (range || v > (max - d) / 10)
			range = true;
		else
			v = v * 10 + d;
	}
	if (range)
		return NUM_RANGE;
	*out = v;
	return NUM_OK;
}

/* strconv.ParseBool */
static bool parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "1", "t", "T", "TRUE", "true", "True" };
	static const char *const no[] = { "0", "f", "F", "FALSE", "false", "False" };

	for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
		if (strcmp(s, yes[i]) == 0) {
			*out = true;
			return true;
		}
		if (strcmp(s, no[i]) == 0) {
			*out = false;
			return true;
		}
	}
	return false;
}

static uint64_t duration_unit_ns(const char *u, size_t n)
{
	static const struct {
		const char *name;
		uint64_t ns;
	} units[] = {
		{ "ns", 1 },
		{ "us", NS_PER_US },
		{ "\xc2\xb5s", NS_PER_US }, /* U+00B5 micro sign */
		{ "\xce\xbcs", NS_PER_US }, /* U+03BC Greek mu */
		{ "ms", NS_PER_MS },
		{ "s", NS_PER_S },
		{ "m", 60 * NS_PER_S },
		{ "h", 3600 * NS_PER_S },
	};

	for (size_t i = 0; i < ARRAY_LEN(units); i++) {
		if (strlen(units[i].name) == n && memcmp(units[i].name, u, n) == 0)
			return units[i].ns;
	}
	return 0;
}

/* time.ParseDuration without the sign: "0", or one or more <number><unit> where the
 * number is digits with an optional fraction (".5s" and "5.s" are Go-valid too). The
 * fraction is applied with integer arithmetic, truncating, where Go uses float64. */
static bool parse_duration_ns(const char *s, uint64_t *out)
{
	uint64_t total = 0;

	if (strcmp(s, "0") == 0) {
		*out = 0;
		return true;
	}
	if (*s == '\0')
		return false;
	while (*s) {
		uint64_t whole = 0, frac = 0, scale = 1;
		bool pre = false, post = false, frac_full = false;

		for (; *s >= '0' && *s <= '9'; s++) {
			pre = true;
			if (whole > DURATION_NS_MAX / 10)
				return false;
			whole = whole * 10 + (uint64_t)(*s - '0');
			if (whole > DURATION_NS_MAX)
				return false;
		}
		if (*s == '.') {
			/* Digits past 18 cannot change a nanosecond count: ignored, as Go does. */
			for (s++; *s >= '0' && *s <= '9'; s++) {
				post = true;
				if (frac_full || frac > (DURATION_NS_MAX - 9) / 10) {
					frac_full = true;
					continue;
				}
				frac = frac * 10 + (uint64_t)(*s - '0');
				scale *= 10;
			}
		}
		if (!pre && !post)
			return false;

		const char *unit = s;
		while (*s && *s != '.' && (*s < '0' || *s > '9'))
			s++;
		uint64_t unit_ns = duration_unit_ns(unit, (size_t)(s - unit));
		if (unit_ns == 0)
			return false; /* missing or unknown unit */
		if (whole > DURATION_NS_MAX / unit_ns)
			return false;
		uint64_t v = whole * unit_ns;
		v += (uint64_t)((unsigned __int128)frac * unit_ns / scale);
		if (v > DURATION_NS_MAX || total > DURATION_NS_MAX - v)
			return false;
		total += v;
	}
	*out = total;
	return true;
}

bool config_parse_duration_ms(const char *s, uint64_t *ms)
{
	uint64_t ns;

	if (!parse_duration_ns(s, &ns))
		return false;
	*ms = ns / NS_PER_MS;
	return true;
}

/* time.Duration.String for whole milliseconds: "250ms", "6s", "1m30s", "1h0m0s". */
static void format_duration_ms(char *out, size_t cap, uint64_t ms)
{
	if (ms == 0) {
		snprintf(out, cap, "0s");
		return;
	}
	if (ms < MS_PER_S) {
		snprintf(out, cap, "%llums", (unsigned long long)ms);
		return;
	}
	uint64_t h = ms / MS_PER_HOUR, m = ms % MS_PER_HOUR / MS_PER_MIN;
	uint64_t s = ms % MS_PER_MIN / MS_PER_S, frac = ms % MS_PER_S;
	char sec[32];
	if (frac == 0) {
		snprintf(sec, sizeof sec, "%llus", (unsigned long long)s);
	} else {
		char f[8];
		snprintf(f, sizeof f, "%03llu", (unsigned long long)frac);
		for (size_t i = strlen(f); i > 0 && f[i - 1] == '0'; i--)
			f[i - 1] = '\0';
		snprintf(sec, sizeof sec, "%llu.%ss", (unsigned long long)s, f);
	}
	if (h > 0)
		snprintf(out, cap, "%lluh%llum%s", (unsigned long long)h, (unsigned long long)m, sec);
	else if (m > 0)
		snprintf(out, cap, "%llum%s", (unsigned long long)m, sec);
	else
		snprintf(out, cap, "%s", sec);
}

/* ---- the flag table ---------------------------------------------------------- */

enum flag_kind { FLAG_STRING, FLAG_BOOL, FLAG_U32, FLAG_DURATION };

#define NO_SET_FIELD SIZE_MAX

struct flag_def {
	const char *name;
	enum flag_kind kind;
	size_t off;      /* offsetof the value in struct config */
	size_t set_off;  /* offsetof the "given explicitly" bool, or NO_SET_FIELD */
	uint32_t max;    /* FLAG_U32: the largest accepted value */
	bool positive;   /* FLAG_U32 / FLAG_DURATION: 0 is refused */
	const char *arg; /* usage placeholder */
	const char *help;
};

#define CFG_OFF(field) offsetof(struct config, field)

static const struct flag_def flags[] = {
	{ "domain", FLAG_STRING, CFG_OFF(domain), NO_SET_FIELD, 0, false, "FQDN",
	  "Public domain the relay obtains a Let's Encrypt certificate for and serves\n"
	  "(autocert mode). Required unless --insecure-listen is set." },
	{ "cert-cache", FLAG_STRING, CFG_OFF(cert_cache), NO_SET_FIELD, 0, false, "DIR",
	  "Directory for the ACME certificate cache (autocert mode). Created 0700 if\n"
	  "missing; refused if group/other can access it and it is not ours." },
	{ "insecure-listen", FLAG_STRING, CFG_OFF(insecure_listen), NO_SET_FIELD, 0, false, "ADDR",
	  "Serve plain HTTP on ADDR (IP:PORT or :PORT) and disable autocert. Use only\n"
	  "behind a TLS-terminating reverse proxy, or for development." },
	{ "https-listen", FLAG_STRING, CFG_OFF(https_listen), CFG_OFF(https_listen_set), 0, false,
	  "ADDR",
	  "TLS listener address (autocert mode only). Use a high port such as :8443\n"
	  "when the host forwards 443 to it. Refused together with --insecure-listen." },
	{ "http-listen", FLAG_STRING, CFG_OFF(http_listen), CFG_OFF(http_listen_set), 0, false,
	  "ADDR",
	  "ACME HTTP-01 challenge listener address (autocert mode only); every other\n"
	  "request gets 404. Refused together with --insecure-listen." },
	{ "metrics-listen", FLAG_STRING, CFG_OFF(metrics_listen), NO_SET_FIELD, 0, false, "ADDR",
	  "Prometheus /metrics listener. Must be a loopback IP literal and a port\n"
	  "(127.0.0.1:9090, [::1]:9090); hostnames are refused. Empty disables it." },
	{ "trust-x-forwarded-for", FLAG_BOOL, CFG_OFF(trust_x_forwarded_for), NO_SET_FIELD, 0, false,
	  NULL,
	  "Key the per-IP rate limiter on the left-most X-Forwarded-For entry. Only\n"
	  "behind a proxy that sets it: otherwise clients choose their own IP." },
	{ "https-proxy-protocol", FLAG_BOOL, CFG_OFF(https_proxy_protocol),
	  CFG_OFF(https_proxy_protocol_set), 0, false, NULL,
	  "Require a PROXY protocol v2 header before the TLS handshake on every\n"
	  "--https-listen connection and use its source address as the client IP.\n"
	  "Connections without a valid header are closed unserved." },
	{ "max-connections", FLAG_U32, CFG_OFF(max_connections), NO_SET_FIELD, UINT32_MAX, false, "N",
	  "Relay-wide cap on live WebSocket connections (/v1/server and /v1/client\n"
	  "together); upgrades beyond it get 503. 1 to 16000000." },
	{ "zerocopy-min-bytes", FLAG_U32, CFG_OFF(zerocopy_min_bytes), NO_SET_FIELD, UINT32_MAX, false, "N",
	  "Sends of at least N bytes use io_uring zero-copy (send_zc); 0 (default)\n"
	  "never. Pays off only for large sends on real NICs: loopback always copies,\n"
	  "and a send's buffers are held until the kernel releases them." },
	{ "rate-limit-burst", FLAG_U32, CFG_OFF(rate_limit_burst), NO_SET_FIELD, UINT32_MAX, false,
	  "N",
	  "Upgrade attempts a source IP may make in a burst before 429. 0 turns the\n"
	  "per-IP limiter off." },
	{ "rate-limit-refill", FLAG_DURATION, CFG_OFF(rate_limit_refill_ms), NO_SET_FIELD, 0, true,
	  "DURATION", "One attempt is refilled per source IP every DURATION (> 0)." },
	{ "grace-period", FLAG_DURATION, CFG_OFF(grace_period_ms), NO_SET_FIELD, 0, false,
	  "DURATION",
	  "How long a disconnected binary's server-id and phones are kept for it to\n"
	  "reconnect. 0 releases them at once." },
	{ "heartbeat-interval", FLAG_DURATION, CFG_OFF(heartbeat_interval_ms), NO_SET_FIELD, 0, true,
	  "DURATION", "Interval between WebSocket pings on every connection (> 0)." },
	{ "heartbeat-timeout", FLAG_DURATION, CFG_OFF(heartbeat_timeout_ms), NO_SET_FIELD, 0, true,
	  "DURATION", "A connection whose pong is this late is closed (> 0)." },
	{ "conflict-probe-timeout", FLAG_DURATION, CFG_OFF(conflict_probe_timeout_ms), NO_SET_FIELD,
	  0, true, "DURATION",
	  "How long the incumbent binary of a claimed server-id has to answer the\n"
	  "liveness probe before a new claimant takes over (> 0)." },
	{ "workers", FLAG_U32, CFG_OFF(workers), NO_SET_FIELD, WORKERS_MAX, false, "N",
	  "Worker threads, one io_uring each. 0 means one per online CPU; at most 1024." },
	{ "version", FLAG_BOOL, CFG_OFF(show_version), NO_SET_FIELD, 0, false, NULL,
	  "Print the version and exit 0." },
};

static const struct flag_def *flag_find(const char *name, size_t n)
{
	for (size_t i = 0; i < ARRAY_LEN(flags); i++) {
		if (strlen(flags[i].name) == n && memcmp(flags[i].name, name, n) == 0)
			return &flags[i];
	}
	return NULL;
}

static void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->domain = "";
	cfg->cert_cache = "";
	cfg->insecure_listen = "";
	cfg->https_listen = CONFIG_HTTPS_LISTEN_DEFAULT;
	cfg->http_listen = CONFIG_HTTP_LISTEN_DEFAULT;
	cfg->metrics_listen = CONFIG_METRICS_LISTEN_DEFAULT;
	cfg->max_connections = CONFIG_MAX_CONNECTIONS_DEFAULT;
	cfg->rate_limit_burst = CONFIG_RATE_LIMIT_BURST_DEFAULT;
	cfg->rate_limit_refill_ms = CONFIG_RATE_LIMIT_REFILL_MS_DEFAULT;
	cfg->grace_period_ms = CONFIG_GRACE_PERIOD_MS_DEFAULT;
	cfg->heartbeat_interval_ms = CONFIG_HEARTBEAT_INTERVAL_MS_DEFAULT;
	cfg->heartbeat_timeout_ms = CONFIG_HEARTBEAT_TIMEOUT_MS_DEFAULT;
	cfg->conflict_probe_timeout_ms = CONFIG_CONFLICT_PROBE_TIMEOUT_MS_DEFAULT;
	cfg->workers = 0;
}

static int usage_error(struct boot_refusal *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int usage_error(struct boot_refusal *r, const char *fmt, ...)
{
	struct boot_field *f;
	va_list ap;

	refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid command line");
	f = &r->fields[r->nfields++];
	f->key = "err";
	va_start(ap, fmt);
	(void)vsnprintf(f->value, sizeof f->value, fmt, ap);
	va_end(ap);
	field_add(r, "fix", "run %s --help for the flags and their syntax", PROGRAM_NAME);
	return CONFIG_EXIT_USAGE;
}

/* Store value into the flag's field; on failure fill r as Go's flag package words it. */
static int flag_set(struct config *cfg, const struct flag_def *def, const char *value,
		    struct boot_refusal *r)
{
	char *field = (char *)cfg + def->off;
	char q[QUOTE_BYTES];
	uint64_t v;

	switch (def->kind) {
	case FLAG_STRING:
		*(const char **)(void *)field = value;
		break;
	case FLAG_BOOL: {
		bool b;
		if (!parse_bool(value, &b))
			return usage_error(r, "invalid boolean value %s for -%s: parse error",
					   quote(q, sizeof q, value), def->name);
		*(bool *)(void *)field = b;
		break;
	}
	case FLAG_U32:
		switch (parse_dec(value, def->max, &v)) {
		case NUM_OK:
			break;
		case NUM_SYNTAX:
			return usage_error(r, "invalid value %s for flag -%s: parse error",
					   quote(q, sizeof q, value), def->name);
		case NUM_RANGE:
			if (def->max == UINT32_MAX)
				return usage_error(r, "invalid value %s for flag -%s: value out of range",
						   quote(q, sizeof q, value), def->name);
			return usage_error(r, "invalid value %s for flag -%s: must be at most %u",
					   quote(q, sizeof q, value), def->name, def->max);
		}
		if (def->positive && v == 0)
			return usage_error(r, "invalid value %s for flag -%s: must be positive",
					   quote(q, sizeof q, value), def->name);
		*(uint32_t *)(void *)field = (uint32_t)v;
		break;
	case FLAG_DURATION:
		if (!config_parse_duration_ms(value, &v))
			return usage_error(r, "invalid value %s for flag -%s: parse error",
					   quote(q, sizeof q, value), def->name);
		if (def->positive && v == 0)
			return usage_error(r, "invalid value %s for flag -%s: must be at least 1ms",
					   quote(q, sizeof q, value), def->name);
		*(uint64_t *)(void *)field = v;
		break;
	}
	if (def->set_off != NO_SET_FIELD)
		*(bool *)(void *)((char *)cfg + def->set_off) = true;
	return CONFIG_OK;
}

/* getenv over envp: the first entry wins, as with glibc and Go. */
static const char *env_get(char *const envp[], const char *name)
{
	size_t n = strlen(name);

	for (; envp && *envp; envp++) {
		if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
			return *envp + n + 1;
	}
	return NULL;
}

static void read_env(struct config *cfg, char *const envp[])
{
	cfg->production_env = env_get(envp, "PYRYCODE_RELAY_PRODUCTION");
	cfg->single_instance_env = env_get(envp, "PYRYCODE_RELAY_SINGLE_INSTANCE");
	cfg->production = cfg->production_env && strcmp(cfg->production_env, "1") == 0;
	cfg->single_instance = cfg->single_instance_env && strcmp(cfg->single_instance_env, "1") == 0;
	cfg->fcm_credentials = env_get(envp, "PYRYCODE_RELAY_FCM_CREDENTIALS");
	cfg->fly_app_name = env_get(envp, "FLY_APP_NAME");
	cfg->home = env_get(envp, "HOME");
}

/* os.UserHomeDir + "/.pyrycode-relay/certs", or the relative path without a home. */
static int default_cert_cache(struct config *cfg, struct boot_refusal *r)
{
	if (!cfg->home || cfg->home[0] == '\0') {
		cfg->cert_cache = CERT_CACHE_RELATIVE;
		return CONFIG_OK;
	}
	int n = snprintf(cfg->cert_cache_buf, sizeof cfg->cert_cache_buf, "%s%s", cfg->home,
			 CERT_CACHE_SUFFIX);
	if (n < 0 || (size_t)n >= sizeof cfg->cert_cache_buf) {
		/* Silently falling back to the relative path would hide the keys somewhere
		 * the operator did not choose. */
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid command line");
		field_add(r, "err", "$HOME is %zu bytes long: too long to derive the default --cert-cache",
			  strlen(cfg->home));
		field_add(r, "fix", "pass --cert-cache DIR explicitly");
		return CONFIG_EXIT_USAGE;
	}
	cfg->cert_cache = cfg->cert_cache_buf;
	return CONFIG_OK;
}

int config_parse(struct config *cfg, int argc, char *const argv[], char *const envp[],
		 struct boot_refusal *r)
{
	bool cert_cache_given = false;
	char q[QUOTE_BYTES];
	int i = 1;

	ASSERT(argc >= 0);
	config_defaults(cfg);
	refusal_begin(r, CONFIG_OK, NULL);
	read_env(cfg, envp);

	/* flag.FlagSet.parseOne, step for step, except that parsing a positional argument
	 * is an error rather than the silent end of the flags. */
	while (i < argc) {
		const char *s = argv[i];

		if (s[0] != '-' || s[1] == '\0')
			break;
		const char *name = s + 1;
		if (name[0] == '-') {
			name++;
			if (name[0] == '\0') { /* "--" ends the flags */
				i++;
				break;
			}
		}
		if (name[0] == '\0' || name[0] == '-' || name[0] == '=')
			return usage_error(r, "bad flag syntax: %s", s);
		i++;

		const char *eq = strchr(name + 1, '=');
		size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
		const char *value = eq ? eq + 1 : NULL;
		const struct flag_def *def = flag_find(name, name_len);
		if (!def) {
			if ((name_len == 1 && name[0] == 'h') ||
			    (name_len == 4 && memcmp(name, "help", 4) == 0))
				return CONFIG_HELP;
			return usage_error(r, "flag provided but not defined: -%.*s", (int)name_len, name);
		}
		if (def->kind == FLAG_BOOL) {
			/* a bool never takes the next argument: "-version false" is
			 * "-version" and a positional "false" */
			if (!value)
				value = "true";
		} else if (!value) {
			if (i >= argc)
				return usage_error(r, "flag needs an argument: -%s", def->name);
			value = argv[i++];
		}
		int rc = flag_set(cfg, def, value, r);
		if (rc != CONFIG_OK)
			return rc;
		if (def->off == CFG_OFF(cert_cache))
			cert_cache_given = true;
	}
	/* Go stops at the first non-flag and the relay never looks at the rest, so a
	 * typo such as "--domain=a b" would start with half a config. */
	if (i < argc)
		return usage_error(r, "unexpected positional argument %s: every setting is a flag",
				   quote(q, sizeof q, argv[i]));

	if (!cert_cache_given)
		return default_cert_cache(cfg, r);
	return CONFIG_OK;
}

/* ---- FCM service-account key (§7.2, §7.3) ------------------------------------ */

/* A strict RFC 8259 reader, enough to walk a service-account key without copying it.
 * It validates everything (encoding/json refuses malformed input outright) but keeps
 * only the raw spans of the three string members the check needs. */
struct json {
	const char *p;
	const char *end;
	unsigned depth;
};

static void json_ws(struct json *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static bool json_lit(struct json *j, const char *lit)
{
	size_t n = strlen(lit);

	if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
		return false;
	j->p += n;
	return true;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* On success *raw spans the still-escaped contents between the quotes. */
static bool json_string(struct json *j, struct span *raw)
{
	if (j->p >= j->end || *j->p != '"')
		return false;
	const char *start = ++j->p;
	while (j->p < j->end) {
		uint8_t c = (uint8_t)*j->p;
		if (c == '"') {
			*raw = span_make(start, (size_t)(j->p - start));
			j->p++;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c == '\\') {
			j->p++;
			if (j->p >= j->end)
				return false;
			switch (*j->p) {
			case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
				j->p++;
				break;
			case 'u':
				if (j->end - j->p < 5 || !is_hex(j->p[1]) || !is_hex(j->p[2]) ||
				    !is_hex(j->p[3]) || !is_hex(j->p[4]))
					return false;
				j->p += 5;
				break;
			default:
				return false;
			}
			continue;
		}
		j->p++;
	}
	return false;
}

static bool json_digits(struct json *j)
{
	const char *start = j->p;

	while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
		j->p++;
	return j->p > start;
}

static bool json_number(struct json *j)
{
	if (j->p < j->end && *j->p == '-')
		j->p++;
	if (j->p < j->end && *j->p == '0')
		j->p++;
	else if (!json_digits(j))
		return false;
	if (j->p < j->end && *j->p == '.') {
		j->p++;
		if (!json_digits(j))
			return false;
	}
	if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
		j->p++;
		if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
			j->p++;
		if (!json_digits(j))
			return false;
	}
	return true;
}

static bool json_value(struct json *j);

static bool json_container(struct json *j, char close, bool object)
{
	struct span ignored;

	if (++j->depth > JSON_DEPTH_MAX)
		return false;
	j->p++;
	json_ws(j);
	if (j->p < j->end && *j->p == close) {
		j->p++;
		j->depth--;
		return true;
	}
	for (;;) {
		if (object) {
			if (!json_string(j, &ignored))
				return false;
			json_ws(j);
			if (j->p >= j->end || *j->p != ':')
				return false;
			j->p++;
			json_ws(j);
		}
		if (!json_value(j))
			return false;
		json_ws(j);
		if (j->p >= j->end)
			return false;
		if (*j->p == close) {
			j->p++;
			j->depth--;
			return true;
		}
		if (*j->p != ',')
			return false;
		j->p++;
		json_ws(j);
	}
}

static bool json_value(struct json *j)
{
	struct span ignored;

	if (j->p >= j->end)
		return false;
	switch (*j->p) {
	case '{':
		return json_container(j, '}', true);
	case '[':
		return json_container(j, ']', false);
	case '"':
		return json_string(j, &ignored);
	case 't':
		return json_lit(j, "true");
	case 'f':
		return json_lit(j, "false");
	case 'n':
		return json_lit(j, "null");
	default:
		return json_number(j);
	}
}

static unsigned hex_val(char c)
{
	if (c >= '0' && c <= '9')
		return (unsigned)(c - '0');
	return (unsigned)((c | 0x20) - 'a' + 10);
}

/* Unescape a validated JSON string into out. Code points outside ASCII become one
 * 0xff byte each: the checks below only ever compare ASCII. False when out is full. */
static bool json_unescape(struct span raw, char *out, size_t cap, size_t *len)
{
	const char *p = (const char *)raw.ptr, *end = p + raw.len;
	size_t n = 0;

	while (p < end) {
		char c = *p++;
		if (c == '\\') {
			c = *p++;
			switch (c) {
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'n': c = '\n'; break;
			case 'r': c = '\r'; break;
			case 't': c = '\t'; break;
			case 'u': {
				unsigned cp = hex_val(p[0]) << 12 | hex_val(p[1]) << 8 |
					      hex_val(p[2]) << 4 | hex_val(p[3]);
				p += 4;
				c = cp < 0x80 ? (char)cp : (char)0xff;
				break;
			}
			default: /* '"', '\\', '/' stand for themselves */
				break;
			}
		}
		if (n + 1 >= cap)
			return false;
		out[n++] = c;
	}
	out[n] = '\0';
	*len = n;
	return true;
}

static bool json_key_is(struct span raw, const char *name)
{
	char key[32];
	size_t n;

	/* encoding/json matches struct tags case-insensitively */
	return json_unescape(raw, key, sizeof key, &n) && span_eq_nocase(span_make(key, n), name);
}

static bool is_base64_or_space(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/' || c == '=' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* A PEM block labelled PRIVATE KEY (PKCS#8) or RSA PRIVATE KEY (PKCS#1) with a
 * non-empty base64 body: the shapes Google issues. Decoding the DER and proving it is
 * RSA is the push sender's job when it loads the key. */
static bool pem_private_key(const char *key)
{
	static const char *const labels[] = { "PRIVATE KEY", "RSA PRIVATE KEY" };

	for (size_t i = 0; i < ARRAY_LEN(labels); i++) {
		char begin[48], end_line[48];
		snprintf(begin, sizeof begin, "-----BEGIN %s-----", labels[i]);
		snprintf(end_line, sizeof end_line, "-----END %s-----", labels[i]);

		const char *b = strstr(key, begin);
		if (!b)
			continue;
		const char *body = b + strlen(begin);
		const char *e = strstr(body, end_line);
		if (!e)
			continue;
		bool has_data = false, clean = true;
		for (const char *p = body; p < e; p++) {
			if (!is_base64_or_space(*p))
				clean = false;
			else if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
				has_data = true;
		}
		if (clean && has_data)
			return true;
	}
	return false;
}

/* type == "service_account", client_email non-empty, private_key a PEM private key. */
static bool fcm_credentials_usable(const char *value)
{
	struct json j = { .p = value, .end = value + strlen(value), .depth = 1 };
	struct span type = { 0 }, email = { 0 }, key = { 0 };
	bool have_type = false, have_email = false, have_key = false;

	json_ws(&j);
	if (j.p >= j.end || *j.p != '{')
		return false;
	j.p++;
	json_ws(&j);
	if (j.p < j.end && *j.p == '}') {
		j.p++;
	} else {
		for (;;) {
			struct span name, str;

			if (!json_string(&j, &name))
				return false;
			json_ws(&j);
			if (j.p >= j.end || *j.p != ':')
				return false;
			j.p++;
			json_ws(&j);

			struct span *slot = NULL;
			bool *have = NULL;
			if (json_key_is(name, "type")) {
				slot = &type;
				have = &have_type;
			} else if (json_key_is(name, "client_email")) {
				slot = &email;
				have = &have_email;
			} else if (json_key_is(name, "private_key")) {
				slot = &key;
				have = &have_key;
			}
			if (slot && j.p < j.end && *j.p == '"') {
				if (!json_string(&j, &str))
					return false;
				*slot = str; /* the last duplicate wins, as in encoding/json */
				*have = true;
			} else if (slot && !json_lit(&j, "null")) {
				/* null leaves a Go string field alone; anything else fails
				 * to unmarshal into it */
				return false;
			} else if (!slot && !json_value(&j)) {
				return false;
			}
			json_ws(&j);
			if (j.p >= j.end)
				return false;
			if (*j.p == '}') {
				j.p++;
				break;
			}
			if (*j.p != ',')
				return false;
			j.p++;
			json_ws(&j);
		}
	}
	json_ws(&j);
	if (j.p != j.end)
		return false;
	if (!have_type || !have_email || !have_key || email.len == 0)
		return false;

	char small[32];
	size_t n;
	if (!json_unescape(type, small, sizeof small, &n) || strcmp(small, "service_account") != 0 ||
	    n != strlen("service_account"))
		return false;

	char pem[FCM_PRIVATE_KEY_BYTES_MAX];
	if (!json_unescape(key, pem, sizeof pem, &n) || memchr(pem, '\0', n))
		return false;
	return pem_private_key(pem);
}

/* ---- listener addresses (§1.5, §1.6) ----------------------------------------- */

static const char why_not_ip[] = "host is not an IP literal (hostnames are not resolved)";

/* net.SplitHostPort's rules and messages, then a numeric port 1..65535, then an IP
 * literal host: the relay binds without resolving names. */
bool config_parse_listen(const char *s, bool allow_empty_host, struct listen_addr *out,
			 const char **why)
{
	const char *colon, *host, *host_end, *rest_open, *rest_close;
	bool bracketed = false;

	memset(out, 0, sizeof *out);
	if (!s || s[0] == '\0') {
		*why = "listener address is empty";
		return false;
	}
	colon = strrchr(s, ':');
	if (!colon) {
		*why = "missing port in address";
		return false;
	}
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (!rb) {
			*why = "missing ']' in address";
			return false;
		}
		if (rb + 1 != colon) {
			*why = rb[1] == ':' ? "too many colons in address" : "missing port in address";
			return false;
		}
		host = s + 1;
		host_end = rb;
		bracketed = true;
		rest_open = s + 1;
		rest_close = rb + 1;
	} else {
		host = s;
		host_end = colon;
		if (memchr(s, ':', (size_t)(colon - s))) {
			*why = "too many colons in address";
			return false;
		}
		rest_open = s;
		rest_close = s;
	}
	if (strchr(rest_open, '[')) {
		*why = "unexpected '[' in address";
		return false;
	}
	if (strchr(rest_close, ']')) {
		*why = "unexpected ']' in address";
		return false;
	}

	uint64_t port;
	switch (parse_dec(colon + 1, UINT16_MAX, &port)) {
	case NUM_OK:
		break;
	case NUM_SYNTAX:
		*why = "port is not a decimal number";
		return false;
	case NUM_RANGE:
		*why = "port out of range (1-65535)";
		return false;
	}
	if (port == 0) {
		*why = "port 0 is not permitted (ephemeral-port placeholder)";
		return false;
	}

	size_t host_len = (size_t)(host_end - host);
	if (host_len == 0) {
		if (bracketed || !allow_empty_host) {
			*why = "missing host: an IP literal is required";
			return false;
		}
		out->port = (uint16_t)port;
		return true;
	}
	uint8_t bin[16];
	if (host_len >= sizeof out->host) {
		*why = why_not_ip;
		return false;
	}
	memcpy(out->host, host, host_len);
	out->host[host_len] = '\0';
	if (inet_pton(bracketed ? AF_INET6 : AF_INET, out->host, bin) != 1) {
		memset(out, 0, sizeof *out);
		*why = bracketed ? "host in brackets is not an IPv6 literal (zones are not supported)" :
				   why_not_ip;
		return false;
	}
	out->is_ipv6 = bracketed;
	out->port = (uint16_t)port;
	return true;
}

bool config_metrics_listen_valid(const char *s, const char **why)
{
	static const char not_loopback[] = "host is not a loopback IP (127.0.0.0/8 or ::1)";
	static const uint8_t loopback6[16] = { [15] = 1 };
	struct listen_addr a;
	uint8_t bin[16];

	if (!s || s[0] == '\0') {
		*why = "metrics listener bind address is empty";
		return false;
	}
	if (!config_parse_listen(s, false, &a, why)) {
		/* Say why a name is refused: resolving it would reopen a DNS-rebinding
		 * window between this check and bind. */
		if (*why == why_not_ip)
			*why = "host is not an IP literal (hostnames are rejected to avoid DNS-time "
			       "TOCTOU; provide a loopback IP literal such as 127.0.0.1 or [::1])";
		return false;
	}
	if (inet_pton(a.is_ipv6 ? AF_INET6 : AF_INET, a.host, bin) != 1) {
		*why = why_not_ip; /* cannot happen: config_parse_listen checked it */
		return false;
	}
	/* ::ffff:127.0.0.1 is refused too: the rule is 127.0.0.0/8 or exactly ::1 */
	if (a.is_ipv6 ? memcmp(bin, loopback6, sizeof loopback6) != 0 : bin[0] != 127) {
		*why = not_loopback;
		return false;
	}
	return true;
}

/* ---- Linux capabilities (§7.4 step 10) --------------------------------------- */

/* include/uapi/linux/capability.h; bit positions are ABI and only ever appended. */
static const char *const cap_names[] = {
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
	"CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
	"CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
	"CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
	"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
};

_Static_assert(ARRAY_LEN(cap_names) == 41, "capability table covers bits 0..40");

static void cap_name(char *out, size_t cap, unsigned bit)
{
	if (bit < ARRAY_LEN(cap_names))
		snprintf(out, cap, "%s (bit %u)", cap_names[bit], bit);
	else
		snprintf(out, cap, "bit %u", bit);
}

/* "<prefix><CAP_X (bit N), ...>; allowlist: [...]", naming every offending bit that
 * fits the field; a full root set does not, so the rest is counted and the raw mask
 * goes into its own field. */
static void cap_refusal_err(char *out, size_t cap, uint64_t unexpected)
{
	static const char prefix[] = "relay: process has unexpected effective Linux capabilities: ";
	static const char suffix[] = "; allowlist: [CAP_NET_BIND_SERVICE (bit 10)]";
	static const size_t more_room = 48; /* ", and NN more (see value)" */
	size_t n = 0, budget;

	ASSERT(cap > sizeof prefix + sizeof suffix + more_room);
	budget = cap - sizeof suffix - more_room;
	memcpy(out, prefix, sizeof prefix - 1);
	n = sizeof prefix - 1;
	for (unsigned bit = 0; bit < 64; bit++) {
		if (!(unexpected & (1ull << bit)))
			continue;
		char item[48];
		cap_name(item, sizeof item, bit);
		size_t len = strlen(item) + (n > sizeof prefix - 1 ? 2 : 0);
		if (n + len >= budget) {
			unsigned rest = (unsigned)__builtin_popcountll(unexpected >> bit);
			n += (size_t)snprintf(out + n, cap - n, ", and %u more (see value)", rest);
			break;
		}
		n += (size_t)snprintf(out + n, cap - n, "%s%s", n > sizeof prefix - 1 ? ", " : "", item);
	}
	snprintf(out + n, cap - n, "%s", suffix);
}

/* ---- config_check ------------------------------------------------------------ */

static int refuse_env(struct boot_refusal *r, const char *name, const char *reason,
		      const char *fix)
{
	refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid env-var config");
	field_add(r, "err", "relay: invalid env-var config: %s: %s", name, reason);
	field_add(r, "env_var", "%s", name);
	field_add(r, "reason", "%s", reason);
	field_add(r, "fix", "%s", fix);
	return CONFIG_EXIT_USAGE;
}

/* §7.3: the first failing variable, in the reference's registry order. */
static int check_env(const struct config *cfg, struct boot_refusal *r)
{
	const struct {
		const char *name;
		const char *value;
		const char *fix;
	} one_or_unset[] = {
		{ "PYRYCODE_RELAY_PRODUCTION", cfg->production_env,
		  "set PYRYCODE_RELAY_PRODUCTION=1 for production mode, or unset it" },
		{ "PYRYCODE_RELAY_SINGLE_INSTANCE", cfg->single_instance_env,
		  "set PYRYCODE_RELAY_SINGLE_INSTANCE=1 to assert single-instance intent, or unset it" },
	};

	for (size_t i = 0; i < ARRAY_LEN(one_or_unset); i++) {
		const char *v = one_or_unset[i].value;
		char q[QUOTE_BYTES], reason[BOOT_FIELD_VALUE_BYTES];

		if (!v || strcmp(v, "1") == 0)
			continue;
		snprintf(reason, sizeof reason, "malformed-value: expected \"1\" or unset, got %s",
			 quote(q, sizeof q, v));
		return refuse_env(r, one_or_unset[i].name, reason, one_or_unset[i].fix);
	}
	if (cfg->fcm_credentials && !fcm_credentials_usable(cfg->fcm_credentials))
		/* never echo any of it: it is a private key */
		return refuse_env(r, "PYRYCODE_RELAY_FCM_CREDENTIALS",
				  "not a service-account JSON key (value withheld)",
				  "set PYRYCODE_RELAY_FCM_CREDENTIALS to the whole service-account JSON key "
				  "file, or unset it to run with push wake off");
	return CONFIG_OK;
}

static int check_listener(const char *addr, bool allow_empty_host, struct boot_refusal *r)
{
	struct listen_addr a;
	const char *why;
	char q[QUOTE_BYTES];

	if (config_parse_listen(addr, allow_empty_host, &a, &why))
		return CONFIG_OK;
	refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid listener address");
	field_add(r, "err", "relay: parsing listener address %s: %s", quote(q, sizeof q, addr), why);
	field_add(r, "addr", "%s", addr);
	field_add(r, "fix", "use IP:PORT or :PORT with a numeric port 1-65535, e.g. :8443, "
			    "0.0.0.0:8080 or [::1]:8080; hostnames are not resolved");
	return CONFIG_EXIT_USAGE;
}

int config_check(const struct config *cfg, uint64_t cap_eff, bool cap_eff_ok, uint32_t euid,
		 struct boot_refusal *r)
{
	bool insecure = cfg->insecure_listen[0] != '\0';
	char q[QUOTE_BYTES];
	int rc;

	refusal_begin(r, CONFIG_OK, NULL);

	/* 3. a mode */
	if (!insecure && cfg->domain[0] == '\0') {
		refusal_begin(r, CONFIG_EXIT_USAGE,
			      "either --domain (for autocert) or --insecure-listen (for behind-proxy mode) must be set");
		field_add(r, "err", "relay: neither --domain nor --insecure-listen is set");
		field_add(r, "fix", "pass --domain FQDN to terminate TLS here, or --insecure-listen "
				    "IP:PORT behind a TLS-terminating reverse proxy");
		return CONFIG_EXIT_USAGE;
	}

	/* 4. autocert-only flags given explicitly (even with their defaults) */
	if (insecure && (cfg->https_listen_set || cfg->http_listen_set || cfg->https_proxy_protocol_set)) {
		refusal_begin(r, CONFIG_EXIT_USAGE,
			      "refusing to start: --insecure-listen is mutually exclusive with --http-listen / --https-listen / --https-proxy-protocol");
		field_add(r, "err", "relay: --insecure-listen given with%s%s%s",
			  cfg->http_listen_set ? " --http-listen" : "",
			  cfg->https_listen_set ? " --https-listen" : "",
			  cfg->https_proxy_protocol_set ? " --https-proxy-protocol" : "");
		field_add(r, "fix", "use --insecure-listen alone (proxy-fronted plaintext mode), OR use "
				    "--domain with optional --http-listen / --https-listen (autocert mode); "
				    "the autocert flags have no effect in insecure mode");
		return CONFIG_EXIT_USAGE;
	}

	/* 5. the connection cap */
	if (cfg->max_connections == 0 || cfg->max_connections > CONFIG_MAX_CONNECTIONS_LIMIT) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid --max-connections");
		if (cfg->max_connections == 0)
			field_add(r, "err", "max-connections 0: relay: connection cap must be positive");
		else
			field_add(r, "err", "max-connections %u: relay: connection cap must be at most %u",
				  cfg->max_connections, CONFIG_MAX_CONNECTIONS_LIMIT);
		field_add(r, "value", "%u", cfg->max_connections);
		field_add(r, "fix", "pass a connection count from 1 to %u, or omit the flag for the "
				    "default (%u)", CONFIG_MAX_CONNECTIONS_LIMIT,
			  CONFIG_MAX_CONNECTIONS_DEFAULT);
		return CONFIG_EXIT_USAGE;
	}

	/* 6. environment */
	rc = check_env(cfg, r);
	if (rc != CONFIG_OK)
		return rc;

	/* 7. one registry per deploy */
	if (!cfg->single_instance && cfg->fly_app_name && cfg->fly_app_name[0] != '\0') {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: multi-instance deploy detected");
		field_add(r, "err", "relay: multi-instance deploy detected; set "
				    "PYRYCODE_RELAY_SINGLE_INSTANCE=1 to bypass");
		field_add(r, "bypass_env_var", "PYRYCODE_RELAY_SINGLE_INSTANCE");
		field_add(r, "fix", "set PYRYCODE_RELAY_SINGLE_INSTANCE=1 in the deploy manifest (e.g. "
				    "fly.toml [env]) to assert single-instance intent; the registry lives "
				    "in one process (docs/configuration.md)");
		return CONFIG_EXIT_USAGE;
	}

	/* 8, 9. production mode */
	if (cfg->production && insecure) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: production-mode misconfiguration");
		field_add(r, "err", "relay: --insecure-listen is set with PYRYCODE_RELAY_PRODUCTION=1; "
				    "refusing to start");
		field_add(r, "env_var", "PYRYCODE_RELAY_PRODUCTION");
		field_add(r, "fix", "remove --insecure-listen and set --domain, or unset "
				    "PYRYCODE_RELAY_PRODUCTION");
		return CONFIG_EXIT_USAGE;
	}
	if (cfg->production && euid == 0) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: production-mode misconfiguration");
		field_add(r, "err", "relay: effective uid is 0 with PYRYCODE_RELAY_PRODUCTION=1; "
				    "refusing to start");
		field_add(r, "env_var", "PYRYCODE_RELAY_PRODUCTION");
		field_add(r, "effective_uid", "%u", euid);
		field_add(r, "fix", "drop privileges before exec (systemd User=, docker --user <non-zero>, "
				    "kubernetes securityContext.runAsUser), or unset "
				    "PYRYCODE_RELAY_PRODUCTION if the deploy is truly dev");
		return CONFIG_EXIT_USAGE;
	}

	/* 10. capabilities: only CAP_NET_BIND_SERVICE, and only CapEff */
	if (!cap_eff_ok || (cap_eff & ~CAP_ALLOWED_MASK) != 0) {
		static const char fix[] = "drop extra capabilities (e.g. --cap-drop=ALL "
					  "--cap-add=NET_BIND_SERVICE on docker, "
					  "AmbientCapabilities=CAP_NET_BIND_SERVICE with no other "
					  "capabilities in systemd, or securityContext.capabilities on "
					  "kubernetes)";
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: unexpected Linux capabilities");
		if (!cap_eff_ok) {
			field_add(r, "err", "relay: could not read the CapEff line of /proc/self/status");
		} else {
			ASSERT(r->nfields == 0);
			r->fields[0].key = "err";
			cap_refusal_err(r->fields[0].value, sizeof r->fields[0].value,
					cap_eff & ~CAP_ALLOWED_MASK);
			r->nfields = 1;
			field_add(r, "value", "%016llx", (unsigned long long)cap_eff);
		}
		field_add(r, "fix", "%s", fix);
		return CONFIG_EXIT_USAGE;
	}

	/* 12. metrics listener: loopback IP literal, or "" for none */
	if (cfg->metrics_listen[0] != '\0') {
		const char *why;
		if (!config_metrics_listen_valid(cfg->metrics_listen, &why)) {
			refusal_begin(r, CONFIG_EXIT_USAGE,
				      "refusing to start: invalid --metrics-listen address");
			field_add(r, "err", "relay: metrics listener address %s: %s",
				  quote(q, sizeof q, cfg->metrics_listen), why);
			field_add(r, "value", "%s", cfg->metrics_listen);
			field_add(r, "fix", "use a loopback IP literal such as 127.0.0.1:9090 or [::1]:9090, "
					    "or pass --metrics-listen= to disable");
			return CONFIG_EXIT_USAGE;
		}
	}

	/* 14. the ports of the mode's listeners (§1.6). The expected and actual sets are
	 * built from the same flags, so the surplus check belongs to whoever adds a
	 * listener that is not a flag; what can fail here is the address itself. */
	if (insecure) {
		rc = check_listener(cfg->insecure_listen, true, r);
	} else {
		rc = check_listener(cfg->https_listen, true, r);
		if (rc == CONFIG_OK)
			rc = check_listener(cfg->http_listen, true, r);
	}
	if (rc != CONFIG_OK)
		return rc;
	if (cfg->metrics_listen[0] != '\0')
		return check_listener(cfg->metrics_listen, false, r);
	return CONFIG_OK;
}

/* ---- /proc/self/status ------------------------------------------------------- */

static bool parse_cap_eff(const char *status, uint64_t *out)
{
	const char *p = status;

	for (;;) {
		if (strncmp(p, "CapEff:", 7) == 0)
			break;
		p = strchr(p, '\n');
		if (!p)
			return false;
		p++;
	}
	p += 7;
	while (*p == ' ' || *p == '\t')
		p++;

	uint64_t v = 0;
	const char *digits = p;
	for (; is_hex(*p); p++) {
		if (v >> 60)
			return false; /* more than 64 bits */
		v = v << 4 | hex_val(*p);
	}
	if (p == digits)
		return false;
	while (*p == ' ' || *p == '\t' || *p == '\r')
		p++;
	if (*p != '\n' && *p != '\0')
		return false;
	*out = v;
	return true;
}

bool config_read_cap_eff(uint64_t *cap_eff)
{
	char buf[PROC_STATUS_BYTES_MAX];
	size_t len = 0;
	int fd;

	fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	while (len < sizeof buf - 1) {
		ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	return parse_cap_eff(buf, cap_eff);
}

/* ---- usage -------------------------------------------------------------------- */

struct text {
	char buf[USAGE_BYTES_MAX];
	size_t len;
};

static void text_add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void text_add(struct text *t, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, ap);
	va_end(ap);
	ASSERT(n >= 0 && (size_t)n < sizeof t->buf - t->len); /* grow USAGE_BYTES_MAX */
	t->len += (size_t)n;
}

/* Help text lines indented under their flag. */
static void text_indented(struct text *t, const char *s)
{
	while (*s) {
		const char *nl = strchr(s, '\n');
		size_t n = nl ? (size_t)(nl - s) : strlen(s);
		text_add(t, "        %.*s\n", (int)n, s);
		s += n + (nl ? 1 : 0);
	}
}

static void flag_default(const struct flag_def *def, const struct config *d, char *out, size_t cap)
{
	const char *field = (const char *)d + def->off;

	if (def->off == CFG_OFF(cert_cache)) {
		snprintf(out, cap, "$HOME%s, or %s without a home", CERT_CACHE_SUFFIX,
			 CERT_CACHE_RELATIVE);
		return;
	}
	switch (def->kind) {
	case FLAG_STRING: {
		const char *s = *(const char *const *)(const void *)field;
		if (s[0] == '\0')
			snprintf(out, cap, "none");
		else
			snprintf(out, cap, "%s", s);
		break;
	}
	case FLAG_BOOL:
		snprintf(out, cap, "%s", *(const bool *)(const void *)field ? "true" : "false");
		break;
	case FLAG_U32: {
		uint32_t v = *(const uint32_t *)(const void *)field;
		if (def->off == CFG_OFF(workers) && v == 0)
			snprintf(out, cap, "0, one per online CPU");
		else
			snprintf(out, cap, "%u", v);
		break;
	}
	case FLAG_DURATION:
		format_duration_ms(out, cap, *(const uint64_t *)(const void *)field);
		break;
	}
}

void config_print_usage(int fd)
{
	struct text t;
	struct config d;

	config_defaults(&d);
	t.len = 0;
	text_add(&t,
		 "Usage: %s --domain FQDN [flags]\n"
		 "       %s --insecure-listen ADDR [flags]\n"
		 "\n"
		 "Routes WebSocket traffic between pyrycode binaries (/v1/server) and phones\n"
		 "(/v1/client). With --domain the relay terminates TLS itself (Let's Encrypt,\n"
		 "HTTP-01 on --http-listen); with --insecure-listen it serves plain HTTP behind a\n"
		 "TLS-terminating reverse proxy. /healthz is on the public listener, /metrics only\n"
		 "on the loopback --metrics-listen.\n"
		 "\n"
		 "Flags: -flag and --flag are the same; values as --flag=value or --flag value;\n"
		 "booleans as --flag or --flag=true|false. Durations are Go durations (250ms,\n"
		 "30s, 1m30s, 1h). Numbers are decimal. \"--\" ends the flags; positional\n"
		 "arguments are refused.\n"
		 "\n",
		 PROGRAM_NAME, PROGRAM_NAME);
	for (size_t i = 0; i < ARRAY_LEN(flags); i++) {
		char def[96];
		flag_default(&flags[i], &d, def, sizeof def);
		if (flags[i].arg)
			text_add(&t, "  --%s %s\n", flags[i].name, flags[i].arg);
		else
			text_add(&t, "  --%s\n", flags[i].name);
		text_indented(&t, flags[i].help);
		text_add(&t, "        (default: %s)\n", def);
	}
	text_add(&t, "  -h, --help\n        Print this text and exit 0.\n");
	text_add(&t,
		 "\n"
		 "Environment (checked at boot; a bad value refuses to start):\n"
		 "  PYRYCODE_RELAY_PRODUCTION=1       production mode: refuse --insecure-listen and\n"
		 "                                    refuse to run as root. Unset or exactly \"1\".\n"
		 "  PYRYCODE_RELAY_SINGLE_INSTANCE=1  assert that one relay serves the deploy (required\n"
		 "                                    when FLY_APP_NAME is set). Unset or exactly \"1\".\n"
		 "  PYRYCODE_RELAY_FCM_CREDENTIALS    the whole Google service-account JSON key; turns\n"
		 "                                    on push wake. Unset: push wake off.\n"
		 "  FLY_APP_NAME                      set by Fly.io; marks a multi-instance platform.\n"
		 "  HOME                              base of the default --cert-cache.\n"
		 "\n"
		 "Exit status: 0 after --version, --help or a signal-triggered drain; 1 on a\n"
		 "listener failure or a failed certificate-cache setup; 2 on a usage error or a\n"
		 "configuration refused at boot (logged as \"refusing to start: ...\").\n"
		 "See docs/configuration.md.\n");

	for (size_t off = 0; off < t.len;) {
		ssize_t n = write(fd, t.buf + off, t.len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* a closed stdout loses the text; nothing else to do */
		off += (size_t)n;
	}
}
