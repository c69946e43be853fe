/*
 * prom.h - Prometheus text exposition format 0.0.4 writer: pure functions over a
 * caller buffer.
 *
 * Contract:
 * - No I/O, no allocation, no globals. Everything goes into one caller buffer; when it
 *   is too small the writer stops, sets `overflow` and never writes past `cap`.
 * - Names and label names are the caller's constants (never request data) and are
 *   asserted to match the metric-name grammar [a-zA-Z_:][a-zA-Z0-9_:]*.
 * - HELP text escapes '\' and newline; label values escape '\', '"' and newline.
 * - Sample values are written as Go's strconv.FormatFloat(v, 'g', -1, 64), the way the
 *   reference's client library writes them ("1e+06", "0.25", "+Inf", "NaN"), so a
 *   scrape of this relay reads the same as a scrape of the Go relay.
 */
#ifndef PYRELAY_PROM_H
#define PYRELAY_PROM_H

#include "core/common.h"

#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* Longest text prom_format_double writes ("-1.2345678901234567e-308"), plus NUL. */
#define PROM_DOUBLE_CHARS_MAX 32u

enum prom_type {
	PROM_COUNTER,
	PROM_GAUGE,
	PROM_HISTOGRAM,
};

struct prom_out {
	char *buf;
	size_t cap;
	size_t len;
	bool overflow;
};

struct prom_label {
	const char *name;
	const char *value;
};

void prom_out_init(struct prom_out *o, char *buf, size_t cap);

/* "# HELP name help\n# TYPE name type\n": once per family, before its samples. */
void prom_family(struct prom_out *o, const char *name, const char *help, enum prom_type type);

/* "name{l1="v1",...} value\n" (no braces without labels). */
void prom_sample(struct prom_out *o, const char *name, const struct prom_label *labels, size_t nlabels,
		 double value);

/*
 * A histogram's samples: name_bucket{...,le="b"} for each bound (cumulative), the
 * le="+Inf" bucket (= count), name_sum and name_count. counts[] are per bucket, not
 * cumulative, with nbounds + 1 entries (the last is above every bound).
 */
void prom_histogram(struct prom_out *o, const char *name, const struct prom_label *labels, size_t nlabels,
		    const double *bounds, size_t nbounds, const uint64_t *counts, double sum);

/* Go's FormatFloat(v, 'g', -1, 64), except that -0 is "0" as in the exposition writer.
 * out must hold PROM_DOUBLE_CHARS_MAX bytes; returns the length (NUL-terminated). */
size_t prom_format_double(char out[PROM_DOUBLE_CHARS_MAX], double v);

#endif
