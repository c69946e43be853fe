/*
 * usage.c - the usage text for --help (stdout) and usage errors (stderr), generated
 * from the flag table so a flag cannot exist without its line, its help and its
 * default. The text is built whole in a fixed buffer (no allocation), then written.
 */
#include "config/internal.h"

#include <errno.h>
#include <unistd.h>

/* The text is ~5 KiB; the assert in text_add says when it outgrows this. */
#define USAGE_BYTES_MAX 12288

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

static void text_write(const struct text *t, int fd)
{
	for (size_t off = 0; off < t->len;) {
		ssize_t n = write(fd, t->buf + off, t->len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* a closed stdout loses the text; nothing else to do */
		off += (size_t)n;
	}
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
	case FLAG_STRING:
	case FLAG_HTTPS_URL: {
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
		else if (def->off == CFG_OFF(max_connections_per_ip))
			snprintf(out, cap, "%u with the default --max-connections",
				 config_per_ip_default(d->max_connections));
		else
			snprintf(out, cap, "%u", v);
		break;
	}
	case FLAG_DURATION:
		config_format_duration_ms(out, cap, *(const uint64_t *)(const void *)field);
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
		 "       %s --check [the same flags]\n"
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
		 PROGRAM_NAME, PROGRAM_NAME, PROGRAM_NAME);
	for (size_t i = 0; i < config_flags_count; i++) {
		char def[96];
		flag_default(&config_flags[i], &d, def, sizeof def);
		if (config_flags[i].arg)
			text_add(&t, "  --%s %s\n", config_flags[i].name, config_flags[i].arg);
		else
			text_add(&t, "  --%s\n", config_flags[i].name);
		text_indented(&t, config_flags[i].help);
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
		 "  PYRYCODE_RELAY_HANDOVER_NO_SESSIONS=1  taking over with --handover-socket, take\n"
		 "                                    the listeners only: the old relay closes its\n"
		 "                                    WebSockets 1001. Unset or exactly \"1\".\n"
		 "  PYRYCODE_RELAY_FCM_CREDENTIALS    the whole Google service-account JSON key; turns\n"
		 "                                    on push wake. Unset: push wake off.\n"
		 "  FLY_APP_NAME                      set by Fly.io; marks a multi-instance platform.\n"
		 "  HOME                              base of the default --cert-cache.\n"
		 "\n"
		 "Signals: SIGTERM or SIGINT drains: the listeners close, every WebSocket gets\n"
		 "1001 \"shutting down\", and the relay exits 0 within 10 s (a second signal is\n"
		 "ignored). Under a service manager (systemd Type=notify, $NOTIFY_SOCKET) it\n"
		 "sends READY=1 once every worker serves, STOPPING=1 when the drain starts and\n"
		 "WATCHDOG=1 at half of $WATCHDOG_USEC while every worker runs. SIGHUP\n"
		 "reloads --tls-cert/--tls-key (elsewhere it ends the relay). With\n"
		 "--handover-socket, SIGUSR2 starts the binary now at the relay's path with the\n"
		 "same arguments; it takes the listeners and the open plaintext WebSockets over\n"
		 "(MAINPID=, NotifyAccess=all) and this relay drains the rest and exits 0: a\n"
		 "binary upgrade without a refused dial or, for those, a reconnect.\n"
		 "\n"
		 "Exit status: 0 after --version, --help or a signal-triggered drain; 1 on a\n"
		 "listener failure or a failed certificate-cache setup; 2 on a usage error or a\n"
		 "configuration refused at boot (logged as \"refusing to start: ...\").\n"
		 "See docs/configuration.md.\n");

	text_write(&t, fd);
}

void config_print_summary(int fd, const struct config *cfg, uint32_t workers)
{
	struct text t;
	char d[32];
	bool insecure = cfg->insecure_listen[0] != '\0';

	t.len = 0;
	text_add(&t, "%s: configuration ok (checked only: nothing was bound)\n", PROGRAM_NAME);
	if (insecure) {
		text_add(&t, "mode: insecure (plain HTTP behind a TLS-terminating proxy)\n");
		text_add(&t, "listen: %s\n", cfg->insecure_listen);
	} else if (config_mode(cfg) == CONFIG_MODE_TLS_FILES) {
		text_add(&t, "mode: tls (certificate files: %s, %s)\n", cfg->tls_cert, cfg->tls_key);
		text_add(&t, "https-listen: %s%s\n", cfg->https_listen,
			 cfg->https_proxy_protocol ? " (PROXY protocol v2 required)" : "");
	} else {
		text_add(&t, "mode: autocert (TLS for %s)\n", cfg->domain);
		text_add(&t, "https-listen: %s%s\n", cfg->https_listen,
			 cfg->https_proxy_protocol ? " (PROXY protocol v2 required)" : "");
		text_add(&t, "http-listen: %s (ACME HTTP-01)\n", cfg->http_listen);
		text_add(&t, "cert-cache: %s\n", cfg->cert_cache);
		text_add(&t, "acme-directory: %s\n", cfg->acme_directory);
	}
	text_add(&t, "metrics-listen: %s\n", cfg->metrics_listen[0] ? cfg->metrics_listen : "off");
	if (cfg->handover_socket[0])
		text_add(&t, "handover-socket: %s (takes the listeners over from a relay serving it)\n",
			 cfg->handover_socket);
	text_add(&t, "workers: %u%s\n", workers, cfg->workers == 0 ? " (one per CPU)" : "");
	text_add(&t, "max-connections: %u\n", cfg->max_connections);
	enum simd_level isa = SIMD_BASELINE;
	if (config_payload_isa(cfg->payload_isa, &isa))
		text_add(&t, "payload-isa: %s%s\n", simd_name(isa),
			 strcmp(cfg->payload_isa, "auto") == 0 ? " (auto: the widest this CPU has)" : "");
	text_add(&t, "client address: %s\n",
		 cfg->trust_x_forwarded_for ? "left-most X-Forwarded-For entry (--trust-x-forwarded-for)"
		 : !insecure && cfg->https_proxy_protocol ? "PROXY protocol source" : "TCP peer");
	config_format_duration_ms(d, sizeof d, cfg->rate_limit_refill_ms);
	if (cfg->rate_limit_burst == 0)
		text_add(&t, "rate-limit: off\n");
	else
		text_add(&t, "rate-limit: burst %u, one more every %s per client address\n",
			 cfg->rate_limit_burst, d);
	config_format_duration_ms(d, sizeof d, cfg->grace_period_ms);
	text_add(&t, "grace-period: %s\n", d);
	text_add(&t, "production: %s\n", cfg->production ? "yes (PYRYCODE_RELAY_PRODUCTION=1)" : "no");
	text_add(&t, "push wake: %s\n", cfg->fcm_credentials ? "credentials given (this build has no FCM sender: off)" : "off");
	text_write(&t, fd);
}
