/*
 * utf8.h - incremental, fail-fast UTF-8 validation (RFC 3629).
 *
 * Contract: pure functions, no allocation, no globals. The state is one uint32_t the
 * caller keeps, so a text message split across any number of frames and TCP segments
 * is validated byte by byte as it arrives, and the first invalid byte is reported
 * (RFC 6455 §8.1: fail the connection with 1007 as soon as the bytes cannot be UTF-8).
 *
 * Rejects: overlong encodings, surrogates (U+D800..U+DFFF), code points above
 * U+10FFFF, stray continuation bytes, bytes 0xC0, 0xC1, 0xF5..0xFF.
 */
#ifndef PYRELAY_UTF8_H
#define PYRELAY_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UTF8_STATE_INIT 0u

/* Feed n bytes. Returns false at the first byte that makes the stream invalid (the
 * state is then poisoned: every later call returns false too). A true return may still
 * leave a code point half-finished: see utf8_is_complete. */
bool utf8_feed(uint32_t *state, const uint8_t *p, size_t n);

/* True when the bytes fed so far end on a code point boundary. */
bool utf8_is_complete(uint32_t state);

/* Whole-buffer convenience: valid and complete. */
bool utf8_valid(const uint8_t *p, size_t n);

#endif
