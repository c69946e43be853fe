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
