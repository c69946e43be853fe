/*
 * internal.h - what the files of src/config/ share with each other and with nobody
 * else: the flag table (flags.c parses argv with it, usage.c prints it), the refusal
 * builders, Go's %q and the duration formatter. Include it only from the .c files here;
 * the module's API is config.h.
 *
 * Refusal keys and messages are literals at every call of field_add / refusal_begin
 * (tests/checks/log_keys.sh checks that in src/config/), so nothing but a reviewed key
 * can reach the boot log.
 */
#ifndef PYRELAY_CONFIG_INTERNAL_H
#define PYRELAY_CONFIG_INTERNAL_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"

#define PROGRAM_NAME "pyrycode-relay"
#define CERT_CACHE_SUFFIX "/.pyrycode-relay/certs"
#define CERT_CACHE_RELATIVE ".pyrycode-relay/certs"

/* A quoted argument in an error text: longer ones end in `..."`. */
#define QUOTE_BYTES 160

/* ---- the flag table (flags.c) ---- */

/* FLAG_HTTPS_URL: a string that core/url.h must accept as an https:// URL. */
enum flag_kind { FLAG_STRING, FLAG_BOOL, FLAG_U32, FLAG_DURATION, FLAG_HTTPS_URL };

#define NO_SET_FIELD SIZE_MAX
#define CFG_OFF(field) offsetof(struct config, field)

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

/* Every flag, in --help order. */
extern const struct flag_def config_flags[];
extern const size_t config_flags_count;

/* The defaults of every field (cert_cache is "" until config_parse derives it). */
void config_defaults(struct config *cfg);

/* time.Duration.String for whole milliseconds: "250ms", "6s", "1m30s", "1h0m0s". */
void config_format_duration_ms(char *out, size_t cap, uint64_t ms);

/* Go's %q, enough for error text: printable ASCII as is, the rest escaped, so an
 * argument never smuggles a newline into a message printed raw on stderr. Writes at
 * most cap bytes (cap >= 8), cutting long input with `..."`; returns dst. */
const char *config_quote(char *dst, size_t cap, const char *s);

/* ---- the environment (boot.c) ---- */

/* Capture the variables of §7.3 from envp (NULL is an empty environment). */
void config_read_env(struct config *cfg, char *const envp[]);

/* ---- refusals ---- */

static inline void refusal_begin(struct boot_refusal *r, int exit_code, const char *msg)
{
	memset(r, 0, sizeof *r);
	r->exit_code = exit_code;
	r->msg = msg;
}

static inline void field_add(struct boot_refusal *r, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static inline void field_add(struct boot_refusal *r, const char *key, const char *fmt, ...)
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

#endif
