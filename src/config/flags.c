/*
 * flags.c - the command line (reference §7.1) with Go's flag package semantics: the
 * defaults, the flag table, argv parsing, and the number, boolean and duration syntax
 * the flags take. A usage error is a refusal (message, fields, exit code 2) like the
 * boot checks', so main reports both the same way.
 */
#include "config/internal.h"

#include "core/url.h"


/* Go's time.Duration is int64 nanoseconds: anything longer does not parse there. */
#define DURATION_NS_MAX ((uint64_t)INT64_MAX)
#define NS_PER_US 1000ull
#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define MS_PER_S 1000ull
#define MS_PER_MIN 60000ull
#define MS_PER_HOUR 3600000ull

/* ---- error text -------------------------------------------------------------- */

/* Go's %q (internal.h) */
const char *config_quote(char *dst, size_t cap, const char *s)
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
			/* Digits past 18 cannot change a nanosecond count: ignored, as Go does.
			 * The scale stops at 10^19 too, or a long run of zeros (".000...1s")
			 * would wrap it (to 0 after 64 digits: a division by zero below); a
			 * digit that far down is worth under a nanosecond even in hours. */
			for (s++; *s >= '0' && *s <= '9'; s++) {
				post = true;
				if (frac_full || frac > (DURATION_NS_MAX - 9) / 10 ||
				    scale > UINT64_MAX / 10) {
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

/* time.Duration.String (internal.h) */
void config_format_duration_ms(char *out, size_t cap, uint64_t ms)
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

const struct flag_def config_flags[] = {
	{ "domain", FLAG_STRING, CFG_OFF(domain), NO_SET_FIELD, 0, false, "FQDN",
	  "Public domain the relay obtains a Let's Encrypt certificate for and serves\n"
	  "(autocert mode). Required unless --insecure-listen is set. The certificate is\n"
	  "obtained on the first TLS connection after a fresh start (that one fails; the\n"
	  "client's retry is served) and renewed two thirds into its lifetime." },
	{ "cert-cache", FLAG_STRING, CFG_OFF(cert_cache), NO_SET_FIELD, 0, false, "DIR",
	  "Directory for the ACME certificate cache (autocert mode): the account key and\n"
	  "the certificate, in Go autocert's file layout. Created 0700 if missing;\n"
	  "tightened to 0700 if ours; refused if group/other can access it and it is not\n"
	  "ours." },
	{ "insecure-listen", FLAG_STRING, CFG_OFF(insecure_listen), NO_SET_FIELD, 0, false, "ADDR",
	  "Serve plain HTTP on ADDR (IP:PORT or :PORT) and disable autocert. Use only\n"
	  "behind a TLS-terminating reverse proxy, or for development." },
	{ "https-listen", FLAG_STRING, CFG_OFF(https_listen), CFG_OFF(https_listen_set), 0, false,
	  "ADDR",
	  "TLS listener address (autocert or certificate-files mode). Use a high port\n"
	  "such as :8443 when the host forwards 443 to it. Refused together with\n"
	  "--insecure-listen." },
	{ "tls-cert", FLAG_STRING, CFG_OFF(tls_cert), NO_SET_FIELD, 0, false, "PATH",
	  "Certificate-files mode: terminate TLS on --https-listen with this PEM\n"
	  "certificate chain (leaf first) and --tls-key. Checked at boot; SIGHUP\n"
	  "reloads both without dropping connections. Not with --insecure-listen or\n"
	  "--domain." },
	{ "tls-key", FLAG_STRING, CFG_OFF(tls_key), NO_SET_FIELD, 0, false, "PATH",
	  "The private key (PEM, unencrypted) of --tls-cert." },
	{ "http-listen", FLAG_STRING, CFG_OFF(http_listen), CFG_OFF(http_listen_set), 0, false,
	  "ADDR",
	  "ACME HTTP-01 challenge listener address (autocert mode only); every other\n"
	  "request gets 404. Refused together with --insecure-listen." },
	{ "metrics-listen", FLAG_STRING, CFG_OFF(metrics_listen), NO_SET_FIELD, 0, false, "ADDR",
	  "Prometheus /metrics listener. Must be a loopback IP literal and a port\n"
	  "(127.0.0.1:9090, [::1]:9090); hostnames are refused. Empty disables it." },
	{ "handover-socket", FLAG_STRING, CFG_OFF(handover_socket), NO_SET_FIELD, 0, false, "PATH",
	  "Zero-downtime restart: at start, take the listening sockets over from the\n"
	  "relay serving this unix socket (if any), then serve it for the next one.\n"
	  "The old relay stops accepting and drains; SIGUSR2 starts the binary at\n"
	  "our path as that next relay (an in-place upgrade). Empty: off." },
	{ "trust-x-forwarded-for", FLAG_BOOL, CFG_OFF(trust_x_forwarded_for), NO_SET_FIELD, 0, false,
	  NULL,
	  "Key the per-IP rate limiter on the left-most X-Forwarded-For entry. Only\n"
	  "behind a proxy that sets it: otherwise clients choose their own IP." },
	{ "https-proxy-protocol", FLAG_BOOL, CFG_OFF(https_proxy_protocol),
	  CFG_OFF(https_proxy_protocol_set), 0, false, NULL,
	  "Require a PROXY protocol v2 header (command PROXY, TCP over IPv4 or IPv6)\n"
	  "within 5 s, before the TLS handshake, on every --https-listen connection\n"
	  "(autocert or certificate-files mode) and use its source address as the\n"
	  "client IP. Anything else (no header, v1, LOCAL, UNSPEC, late) is closed\n"
	  "with nothing written. Refused together with --insecure-listen." },
	{ "max-connections", FLAG_U32, CFG_OFF(max_connections), NO_SET_FIELD, UINT32_MAX, false, "N",
	  "Relay-wide cap on live WebSocket connections (/v1/server and /v1/client\n"
	  "together); upgrades beyond it get 503. 1 to 16000000." },
	{ "max-connections-per-ip", FLAG_U32, CFG_OFF(max_connections_per_ip), CFG_OFF(max_connections_per_ip_set),
	  UINT32_MAX, false, "N",
	  "Cap on live WebSocket connections from one client IP (the rate limiter's\n"
	  "key: the peer address, or the X-Forwarded-For entry when trusted); beyond it\n"
	  "503. By default a tenth of --max-connections, at least 16 and at most\n"
	  "1000, never above the cap. 0 turns it off." },
	{ "zerocopy-min-bytes", FLAG_U32, CFG_OFF(zerocopy_min_bytes), NO_SET_FIELD, UINT32_MAX, false, "N",
	  "Sends of at least N bytes use io_uring zero-copy (send_zc); 0 (default)\n"
	  "never. Pays off only for large sends on real NICs: loopback always copies,\n"
	  "and a send's buffers are held until the kernel releases them." },
	{ "batch-wait-us", FLAG_U32, CFG_OFF(batch_wait_us), NO_SET_FIELD, CONFIG_BATCH_WAIT_US_MAX, false, "N",
	  "A worker with nothing ready waits up to N microseconds (default 250) for\n"
	  "several completions before it wakes, so one wake-up serves several frames;\n"
	  "only while 1.6 or more are expected within N and batching does not slow\n"
	  "the traffic (peers waiting for answers). Kernel 6.12+; older kernels wake\n"
	  "at once. 0 turns it off; at most 1000." },
	{ "payload-isa", FLAG_STRING, CFG_OFF(payload_isa), NO_SET_FIELD, 0, false, "NAME",
	  "Instructions for the passes over every payload byte (unmask, ASCII and\n"
	  "JSON string scan): auto (the widest this CPU has), avx2 (32 bytes a step),\n"
	  "sse2 (16) or word (8, any CPU). One this CPU lacks is refused." },
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
	{ "workers", FLAG_U32, CFG_OFF(workers), NO_SET_FIELD, CONFIG_WORKERS_MAX, false, "N",
	  "Worker threads, each with its own io_uring and listening socket, pinned one per\n"
	  "CPU. 0 means one per CPU this process may run on; at most 256." },
	{ "check", FLAG_BOOL, CFG_OFF(check_only), NO_SET_FIELD, 0, false, NULL,
	  "Run every boot check of this command line and environment (flags, values,\n"
	  "addresses, capabilities), bind nothing, print what would be served and exit\n"
	  "0, or exit with the refusal's own code and fix (like nginx -t)." },
	{ "fcm-endpoint", FLAG_HTTPS_URL, CFG_OFF(fcm_endpoint), NO_SET_FIELD, 0, false, "URL",
	  "Where push wakes are POSTed (FCM HTTP v1 messages:send). Change it only for\n"
	  "a test double or an egress proxy; https:// only." },
	{ "fcm-timeout", FLAG_DURATION, CFG_OFF(fcm_timeout_ms), NO_SET_FIELD, 0, true, "DURATION",
	  "Time limit of each HTTP call a push wake makes (the OAuth token fetch, the\n"
	  "FCM send), connect to last byte (> 0)." },
	{ "acme-directory", FLAG_HTTPS_URL, CFG_OFF(acme_directory), NO_SET_FIELD, 0, false, "URL",
	  "ACME directory of the certificate authority (--domain mode). The default is\n"
	  "Let's Encrypt production; use its staging directory, or a test CA such as\n"
	  "Pebble (with --outbound-ca-file for its TLS root), to try a set-up." },
	{ "outbound-ca-file", FLAG_STRING, CFG_OFF(outbound_ca_file), NO_SET_FIELD, 0, false, "PATH",
	  "PEM bundle of CA certificates trusted for outbound HTTPS (FCM, OAuth,\n"
	  "ACME) besides the system's /etc/ssl/certs/ca-certificates.crt: a private CA,\n"
	  "a TLS-inspecting egress proxy, or a test ACME server's root." },
	{ "version", FLAG_BOOL, CFG_OFF(show_version), NO_SET_FIELD, 0, false, NULL,
	  "Print the version and exit 0." },
};

const size_t config_flags_count = ARRAY_LEN(config_flags);

static const struct flag_def *flag_find(const char *name, size_t n)
{
	for (size_t i = 0; i < config_flags_count; i++) {
		if (strlen(config_flags[i].name) == n && memcmp(config_flags[i].name, name, n) == 0)
			return &config_flags[i];
	}
	return NULL;
}

void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->domain = "";
	cfg->cert_cache = "";
	cfg->insecure_listen = "";
	cfg->tls_cert = "";
	cfg->tls_key = "";
	cfg->handover_socket = "";
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
	cfg->batch_wait_us = CONFIG_BATCH_WAIT_US_DEFAULT;
	cfg->payload_isa = CONFIG_PAYLOAD_ISA_DEFAULT;
	cfg->fcm_endpoint = CONFIG_FCM_ENDPOINT_DEFAULT;
	cfg->acme_directory = CONFIG_ACME_DIRECTORY_DEFAULT;
	cfg->outbound_ca_file = "";
	cfg->fcm_timeout_ms = CONFIG_FCM_TIMEOUT_MS_DEFAULT;
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
	case FLAG_HTTPS_URL: {
		struct https_url url;
		const char *why = url_parse_https(value, &url);
		if (why != NULL)
			return usage_error(r, "invalid value %s for flag -%s: %s", config_quote(q, sizeof q, value),
					   def->name, why);
		*(const char **)(void *)field = value;
		break;
	}
	case FLAG_STRING:
		*(const char **)(void *)field = value;
		break;
	case FLAG_BOOL: {
		bool b;
		if (!parse_bool(value, &b))
			return usage_error(r, "invalid boolean value %s for -%s: parse error",
					   config_quote(q, sizeof q, value), def->name);
		*(bool *)(void *)field = b;
		break;
	}
	case FLAG_U32:
		switch (parse_dec(value, def->max, &v)) {
		case NUM_OK:
			break;
		case NUM_SYNTAX:
			return usage_error(r, "invalid value %s for flag -%s: parse error",
					   config_quote(q, sizeof q, value), def->name);
		case NUM_RANGE:
			if (def->max == UINT32_MAX)
				return usage_error(r, "invalid value %s for flag -%s: value out of range",
						   config_quote(q, sizeof q, value), def->name);
			return usage_error(r, "invalid value %s for flag -%s: must be at most %u",
					   config_quote(q, sizeof q, value), def->name, def->max);
		}
		if (def->positive && v == 0)
			return usage_error(r, "invalid value %s for flag -%s: must be positive",
					   config_quote(q, sizeof q, value), def->name);
		*(uint32_t *)(void *)field = (uint32_t)v;
		break;
	case FLAG_DURATION:
		if (!config_parse_duration_ms(value, &v))
			return usage_error(r, "invalid value %s for flag -%s: parse error",
					   config_quote(q, sizeof q, value), def->name);
		if (def->positive && v == 0)
			return usage_error(r, "invalid value %s for flag -%s: must be at least 1ms",
					   config_quote(q, sizeof q, value), def->name);
		*(uint64_t *)(void *)field = v;
		break;
	}
	if (def->set_off != NO_SET_FIELD)
		*(bool *)(void *)((char *)cfg + def->set_off) = true;
	return CONFIG_OK;
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
	config_read_env(cfg, envp);

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
				   config_quote(q, sizeof q, argv[i]));

	/* the per-IP cap follows the relay-wide one unless given */
	if (!cfg->max_connections_per_ip_set)
		cfg->max_connections_per_ip = config_per_ip_default(cfg->max_connections);
	if (!cert_cache_given)
		return default_cert_cache(cfg, r);
	return CONFIG_OK;
}
