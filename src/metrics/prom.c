#include "metrics/prom.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Scratch for number formatting: a uint64 in decimal (20 digits), and "%.*e" with up
 * to 17 significant digits (SHORTEST_DIGITS_MAX below), sign, exponent and NUL. */
#define U64_DECIMAL_BYTES 24u
#define EXP_FORMAT_BYTES 40u

void prom_out_init(struct prom_out *o, char *buf, size_t cap)
{
	*o = (struct prom_out){ .buf = buf, .cap = cap };
}

static void put(struct prom_out *o, const char *s, size_t n)
{
	if (o->overflow)
		return;
	if (n > o->cap - o->len) {
		o->overflow = true;
		return;
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
}

static void put_str(struct prom_out *o, const char *s)
{
	put(o, s, strlen(s));
}

static void put_char(struct prom_out *o, char c)
{
	put(o, &c, 1);
}

static bool name_ok(const char *s)
{
	if (s == NULL || *s == '\0')
		return false;
	for (size_t i = 0; s[i]; i++) {
		char c = s[i];
		bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
		if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
			return false;
	}
	return true;
}

/* HELP: '\' -> "\\", newline -> "\n". Label values also escape '"'. */
static void put_escaped(struct prom_out *o, const char *s, bool quote)
{
	size_t run = 0;
	for (size_t i = 0;; i++) {
		char c = s[i];
		const char *esc = NULL;
		if (c == '\\')
			esc = "\\\\";
		else if (c == '\n')
			esc = "\\n";
		else if (c == '"' && quote)
			esc = "\\\"";
		if (esc == NULL && c != '\0')
			continue;
		put(o, s + run, i - run);
		if (c == '\0')
			return;
		put_str(o, esc);
		run = i + 1;
	}
}

void prom_family(struct prom_out *o, const char *name, const char *help, enum prom_type type)
{
	static const char *const types[] = { "counter", "gauge", "histogram" };
	ASSERT(name_ok(name));
	ASSERT((size_t)type < ARRAY_LEN(types));
	put_str(o, "# HELP ");
	put_str(o, name);
	put_char(o, ' ');
	put_escaped(o, help, false);
	put_str(o, "\n# TYPE ");
	put_str(o, name);
	put_char(o, ' ');
	put_str(o, types[type]);
	put_char(o, '\n');
}

static void put_labels(struct prom_out *o, const struct prom_label *labels, size_t nlabels, const char *le)
{
	if (nlabels == 0 && le == NULL)
		return;
	put_char(o, '{');
	for (size_t i = 0; i < nlabels; i++) {
		ASSERT(name_ok(labels[i].name));
		if (i)
			put_char(o, ',');
		put_str(o, labels[i].name);
		put_str(o, "=\"");
		put_escaped(o, labels[i].value, true);
		put_char(o, '"');
	}
	if (le != NULL) {
		if (nlabels)
			put_char(o, ',');
		put_str(o, "le=\"");
		put_str(o, le);
		put_char(o, '"');
	}
	put_char(o, '}');
}

static void put_value(struct prom_out *o, double v)
{
	char num[PROM_DOUBLE_CHARS_MAX];
	size_t n = prom_format_double(num, v);
	put_char(o, ' ');
	put(o, num, n);
	put_char(o, '\n');
}

static void sample_suffixed(struct prom_out *o, const char *name, const char *suffix,
			    const struct prom_label *labels, size_t nlabels, const char *le, double v)
{
	put_str(o, name);
	put_str(o, suffix);
	put_labels(o, labels, nlabels, le);
	put_value(o, v);
}

void prom_sample(struct prom_out *o, const char *name, const struct prom_label *labels, size_t nlabels,
		 double value)
{
	ASSERT(name_ok(name));
	sample_suffixed(o, name, "", labels, nlabels, NULL, value);
}

void prom_histogram(struct prom_out *o, const char *name, const struct prom_label *labels, size_t nlabels,
		    const double *bounds, size_t nbounds, const uint64_t *counts, double sum)
{
	ASSERT(name_ok(name));
	uint64_t cumulative = 0;
	char le[PROM_DOUBLE_CHARS_MAX];
	for (size_t i = 0; i < nbounds; i++) {
		ASSERT(i == 0 || bounds[i] > bounds[i - 1]);
		cumulative += counts[i];
		prom_format_double(le, bounds[i]);
		sample_suffixed(o, name, "_bucket", labels, nlabels, le, (double)cumulative);
	}
	cumulative += counts[nbounds];
	sample_suffixed(o, name, "_bucket", labels, nlabels, "+Inf", (double)cumulative);
	sample_suffixed(o, name, "_sum", labels, nlabels, NULL, sum);
	sample_suffixed(o, name, "_count", labels, nlabels, NULL, (double)cumulative);
}

/* ------------------------------------------------------------------ numbers */

#define SHORTEST_DIGITS_MAX 17 /* a double always round-trips with 17 */

/* Shortest decimal digits d[0..nd) with v = 0.d * 10^dp, for finite v > 0. */
static int shortest_digits(double v, char d[SHORTEST_DIGITS_MAX + 1], int *dp)
{
	if (v < 9007199254740992.0 && v == floor(v)) {
		/* Integers below 2^53: the exact digits are the shortest that round-trip
		 * (any shorter decimal is another integer), and no strtod is needed, which
		 * keeps a scrape of integer counters cheap. */
		char tmp[U64_DECIMAL_BYTES];
		int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
		*dp = n;
		while (n > 1 && tmp[n - 1] == '0')
			n--;
		memcpy(d, tmp, (size_t)n);
		return n;
	}
	char tmp[EXP_FORMAT_BYTES];
	for (int p = 1; p <= SHORTEST_DIGITS_MAX; p++) {
		snprintf(tmp, sizeof tmp, "%.*e", p - 1, v);
		if (p < SHORTEST_DIGITS_MAX && strtod(tmp, NULL) != v)
			continue;
		/* tmp is "D[.DDD]e[+-]XX" */
		int n = 0;
		const char *s = tmp;
		for (; *s != 'e'; s++) {
			if (*s != '.')
				d[n++] = *s;
		}
		int exp10 = atoi(s + 1);
		while (n > 1 && d[n - 1] == '0')
			n--;
		*dp = exp10 + 1;
		return n;
	}
	ASSERT(!"unreachable");
	return 0;
}

size_t prom_format_double(char out[PROM_DOUBLE_CHARS_MAX], double v)
{
	const char *special = NULL;
	if (isnan(v))
		special = "NaN";
	else if (isinf(v))
		special = v > 0 ? "+Inf" : "-Inf";
	else if (v == 0)
		special = "0"; /* -0 too, as the exposition writer does */
	if (special != NULL) {
		size_t n = strlen(special);
		memcpy(out, special, n + 1);
		return n;
	}
	size_t len = 0;
	if (v < 0) {
		out[len++] = '-';
		v = -v;
	}
	char d[SHORTEST_DIGITS_MAX + 1];
	int dp = 0;
	int nd = shortest_digits(v, d, &dp);
	int exp = dp - 1;
	if (exp < -4 || exp >= 6) {
		/* %e: d.ddde±XX with at least two exponent digits */
		out[len++] = d[0];
		if (nd > 1) {
			out[len++] = '.';
			for (int i = 1; i < nd; i++)
				out[len++] = d[i];
		}
		out[len++] = 'e';
		out[len++] = exp < 0 ? '-' : '+';
		int e = exp < 0 ? -exp : exp;
		if (e >= 100)
			out[len++] = (char)('0' + e / 100);
		out[len++] = (char)('0' + e / 10 % 10);
		out[len++] = (char)('0' + e % 10);
	} else {
		/* %f with exactly the digits needed */
		if (dp > 0) {
			for (int i = 0; i < dp; i++)
				out[len++] = i < nd ? d[i] : '0';
		} else {
			out[len++] = '0';
		}
		int frac = nd - dp > 0 ? nd - dp : 0;
		if (frac > 0) {
			out[len++] = '.';
			for (int i = 0; i < frac; i++) {
				int j = dp + i;
				out[len++] = (j >= 0 && j < nd) ? d[j] : '0';
			}
		}
	}
	ASSERT(len < PROM_DOUBLE_CHARS_MAX);
	out[len] = '\0';
	return len;
}
