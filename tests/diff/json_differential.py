#!/usr/bin/python3
"""Differential test of src/envelope against Python's json module (stdlib only).

Usage: json_differential.py PATH/TO/json_verdict

Generates a few thousand JSON-ish inputs from a fixed seed (JSON_DIFF_SEED overrides
it, JSON_DIFF_ROUNDS scales the count), runs all of them through the C driver in one
process, and compares, for every input:

  * json_valid(input) against "input.decode('utf-8') then json.loads succeeds";
  * envelope_scan's classification, reason, decoded conn_id, close_code, and the exact
    byte spans of `frame` and `push_wake`, against a Python model of reference §3.4
    built on json.loads plus a member walk with JSONDecoder.raw_decode (which yields
    each value's end offset, so the raw span is found independently of our scanner);
  * envelope_push_wake_parse's verdict and decoded token for push-wake envelopes.

Where Python's json module is laxer than RFC 8259, or than Go, Python is configured
to match what we implement (documented exceptions):

  * NaN, Infinity, -Infinity: Python accepts them by default; RFC 8259 §6 does not
    ("Numeric values that cannot be represented ... such as Infinity and NaN are not
    permitted") and neither does Go. parse_constant is set to reject them.
  * Integers longer than 4300 digits: Python 3.11 refuses to convert them
    (sys.set_int_max_str_digits), which is a conversion limit, not a syntax rule.
    The limit is lifted; RFC 8259 grammar has no length limit, and Go accepts them.
  * Nesting deeper than Python's recursion limit raises RecursionError; generated
    inputs stay far below it, and any input that still hits it is counted as skipped
    (depth against JSON_DEPTH_MAX = 10000 is covered by the unit tests).

Where both sides accept the same thing by default (no exception needed, but recorded
because RFC 8259 leaves room):

  * Lone surrogate escapes ("\\ud800"): the RFC 8259 ABNF allows any \\uXXXX (§7),
    §8.2 only warns about unpredictable behaviour. Python keeps a lone surrogate code
    point, Go replaces it with U+FFFD; we accept it and decode it like Go, so the model
    replaces lone surrogates with U+FFFD before comparing decoded strings.
  * Duplicate keys: allowed by the grammar (§4 says SHOULD be unique). The model walks
    members in order: the last one wins, and a null conn_id / close_code leaves the
    earlier value (Go's decoder semantics).
  * Invalid UTF-8: Python's strict decoder rejects it (like us); Go would not.
"""

import json
import os
import random
import struct
import subprocess
import sys

sys.set_int_max_str_digits(0)

SEED = int(os.environ.get("JSON_DIFF_SEED", "8259"))
ROUNDS = int(os.environ.get("JSON_DIFF_ROUNDS", "3"))


def reject_constant(name):
    raise ValueError("non-RFC 8259 constant " + name)


class Pairs(list):
    """An object's members in document order, duplicates kept."""


DECODER = json.JSONDecoder(parse_constant=reject_constant, object_pairs_hook=Pairs)
WS = " \t\n\r"


class Skip(Exception):
    pass


def py_valid(b):
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    try:
        json.loads(s, parse_constant=reject_constant)
        return True
    except RecursionError:
        raise Skip()
    except ValueError:  # JSONDecodeError and the constant refusal
        return False


def go_string(s):
    """Python keeps lone surrogates; Go's decoder makes them U+FFFD."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in s).encode("utf-8")


def skip_ws(s, i):
    while i < len(s) and s[i] in WS:
        i += 1
    return i


def members(s, i):
    """Walk the object starting at s[i] == '{' (the document is known valid)."""
    out = []
    i = skip_ws(s, i + 1)
    if s[i] == "}":
        return out
    while True:
        key, i = DECODER.raw_decode(s, i)
        i = skip_ws(s, i)
        assert s[i] == ":"
        j = skip_ws(s, i + 1)
        val, k = DECODER.raw_decode(s, j)
        out.append((key, val, j, k))
        i = skip_ws(s, k)
        if s[i] == "}":
            return out
        assert s[i] == ","
        i = skip_ws(s, i + 1)


def reason(r):
    return r.replace(" ", "_") if r else "-"


def model_push_wake(val):
    if not isinstance(val, Pairs):
        return reason("push_wake is not a JSON object")
    platform, token, err = "", "", None
    for key, v in val:
        if key not in ("platform", "token"):
            continue
        if v is None:
            continue
        if not isinstance(v, str):
            err = err or "push_wake %s is not a string" % key
            continue
        if key == "platform":
            platform = v
        else:
            token = v
    if err:
        return reason(err)
    if platform != "fcm":
        return reason("push_wake platform is not fcm")
    if token == "":
        return reason("push_wake token is empty")
    return "ok:" + (go_string(token).hex() or "-")


def model(b):
    """The line json_verdict should print for b."""
    valid = py_valid(b)
    malformed = lambda err: "%d malformed %s - 0 -1 0 -1 0 -" % (valid, reason(err))
    if not valid:
        return malformed("envelope is not valid JSON")
    s = b.decode("utf-8")
    i = skip_ws(s, 0)
    if s[i] != "{":
        return malformed("envelope is not a JSON object")
    boff = lambda ci: len(s[:ci].encode("utf-8"))

    conn_id, close, frame, push, type_err = "", 0, None, None, None
    for key, val, j, k in members(s, i):
        if key == "conn_id":
            if val is None:
                pass  # Go: null leaves the field as it was
            elif isinstance(val, str):
                conn_id = val
            else:
                type_err = type_err or "conn_id is not a string"
        elif key == "close_code":
            if val is None:
                pass
            elif type(val) is int and not s[j:k].startswith("-") and val <= 65535:
                close = val
            else:  # floats (fraction/exponent), negatives, -0, bools, strings...
                type_err = type_err or "close_code is not an integer in 0..65535"
        elif key == "frame":
            frame = None if val is None else (boff(j), boff(k) - boff(j))
        elif key == "push_wake":
            push = None if val is None else (boff(j), boff(k) - boff(j), val)
    if type_err:
        return malformed(type_err)

    cid = go_string(conn_id).hex() or "-"
    fr = "-1 0"
    pw = "-1 0"
    pwv = "-"
    if conn_id == "":
        if push is not None:
            kind, err = "push_wake", None
            pw = "%d %d" % push[:2]
            pwv = model_push_wake(push[2])
        else:
            kind, err = "missing_conn_id", "missing conn_id"
    elif close != 0:
        kind, err = "directive", None
    elif frame is not None:
        kind, err = "routed", None
    else:
        kind, err = "missing_frame", "missing frame"
    if kind in ("routed", "directive") and frame is not None:
        fr = "%d %d" % frame
    return "%d %s %s %s %d %s %s %s" % (valid, kind, reason(err), cid, close, fr, pw, pwv)


# ---------------------------------------------------------------- generators

R = random.Random(SEED)
# Probability scale of deliberately wrong pieces (bad bytes, typos, non-RFC whitespace).
# Envelopes are mostly generated clean, so every §3.4 row gets many hits, and broken
# variants come from the mutator.
NOISE = 1.0

ESCAPES = ['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t", "\\u0041", "\\u00e9",
           "\\u00E9", "\\u20AC", "\\ud83d\\ude00", "\\uD83D\\uDE00", "\\ud800", "\\udc00",
           "\\udbff\\udfff", "\\ud800\\u0041", "\\udc00\\ud800", "\\u0000", "\\u001f",
           "\\u003c", "\\u2028", "\\ufffd", "\\uffff"]
BAD_ESCAPES = ["\\x41", "\\u12", "\\u12g4", "\\U0041", "\\a", "\\'", "\\0", "\\ "]
UTF8_OK = ["\u00e4", "\u00ff", "\u0800", "\u20ac", "\ud7ff", "\ue000", "\ufffd", "\uffff",
           "\U00010000", "\U0001f600", "\U0010ffff", "\u2028", "\u2029", "\u00a0", "\x7f"]
UTF8_BAD = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xe0\x80\x80", b"\xe0\x9f\xbf",
            b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80",
            b"\xf5\x80\x80\x80", b"\xfe", b"\xff", b"\xe2\x82", b"\xf0\x9f\x98"]
CONTROL = [b"\x00", b"\x01", b"\x09", b"\x0a", b"\x0d", b"\x1f"]


def ws():
    if R.random() < 0.6:
        return b""
    if R.random() < 0.02 * NOISE:
        return R.choice([b"\x0c", b"\x0b", "\u00a0".encode(), "\ufeff".encode()])  # not RFC ws
    return "".join(R.choice(WS) for _ in range(R.randint(1, 3))).encode()


def gen_string_body(bad_rate=0.01):
    bad_rate *= NOISE
    parts = []
    for _ in range(R.randint(0, 8)):
        r = R.random()
        if r < 0.45:
            parts.append("".join(R.choice("abcxyz019 -_:{}[],\"'<>&") for _ in range(R.randint(1, 12)))
                         .replace('"', '\\"').encode())
        elif r < 0.65:
            parts.append(R.choice(ESCAPES).encode())
        elif r < 0.85:
            parts.append(R.choice(UTF8_OK).encode("utf-8", "surrogatepass"))
        elif r < 0.85 + bad_rate:
            parts.append(R.choice(UTF8_BAD))
        elif r < 0.85 + 2 * bad_rate:
            parts.append(R.choice(CONTROL))
        elif r < 0.85 + 3 * bad_rate:
            parts.append(R.choice(BAD_ESCAPES).encode())
        else:
            parts.append(("x" * R.randint(8, 40)).encode())  # long plain runs: fast path
    return b"".join(parts)


def gen_string(bad_rate=0.01):
    return b'"' + gen_string_body(bad_rate) + b'"'


def gen_number():
    r = R.random()
    if r < 0.05 * NOISE:
        return R.choice([b"NaN", b"Infinity", b"-Infinity", b"+1", b"01", b".5", b"5.", b"1e",
                         b"1e+", b"-", b"--1", b"0x1f", b"1_0", b"-01", b"1.e5", b"1E"])
    s = b"-" if R.random() < 0.3 else b""
    if R.random() < 0.2:
        s += b"0"
    else:
        s += str(R.randint(1, 9)).encode() + b"".join(
            str(R.randint(0, 9)).encode() for _ in range(R.choice([0, 0, 1, 3, 5, 20, 60])))
    if R.random() < 0.3:
        s += b"." + b"".join(str(R.randint(0, 9)).encode() for _ in range(R.randint(1, 6)))
    if R.random() < 0.2:
        s += R.choice([b"e", b"E"]) + R.choice([b"", b"+", b"-"]) + str(R.randint(0, 400)).encode()
    return s


def gen_value(depth=0):
    r = R.random()
    if depth > 6 or r < 0.45:
        r2 = R.random()
        if r2 < 0.4:
            return gen_string()
        if r2 < 0.75:
            return gen_number()
        if r2 < 1 - 0.03 * NOISE:
            return R.choice([b"true", b"false", b"null"])
        return R.choice([b"tru", b"nul", b"True", b"NULL", b"nulll", b"'x'"])
    if r < 0.72:
        items = [ws() + gen_value(depth + 1) + ws() for _ in range(R.randint(0, 4))]
        return b"[" + b",".join(items) + (b"," if R.random() < 0.01 * NOISE else b"") + b"]"
    mem = [ws() + gen_string(0.005) + ws() + b":" + ws() + gen_value(depth + 1) + ws()
           for _ in range(R.randint(0, 4))]
    return b"{" + b",".join(mem) + (b"," if R.random() < 0.01 * NOISE else b"") + b"}"


def gen_document():
    return ws() + gen_value() + ws()


KEYS = [b'"conn_id"', b'"close_code"', b'"frame"', b'"push_wake"']
ODD_KEYS = [b'"conn\\u005fid"', b'"\\u0066rame"', b'"close\\u005Fcode"', b'"push\\u005fwake"',
            b'"Conn_ID"', b'"FRAME"', b'"token"', b'"x"', b'""', b'"conn_id "', b'"frame\\u0000"']


def gen_conn_id():
    r = R.random()
    if r < 0.15:
        return b'""'
    if r < 0.25:
        return b"null"
    if r < 0.25 + 0.05 * NOISE:
        return R.choice([b"1", b"true", b"[]", b"{}", b'["a"]'])
    if r < 0.6:
        return b'"client-srv-%08x"' % R.getrandbits(32)
    return gen_string(0.003)


def gen_close_code():
    return R.choice([b"0", b"0", b"null", b"1000", b"1001", b"4000", b"65535", b"65536",
                     b"-1", b"-0", b"1000.0", b"1e3", b"0.0", b"1E2", b"99999999999999999999",
                     b'"1000"', b"true", b"[]", str(R.randint(0, 70000)).encode()])


def gen_push_wake():
    r = R.random()
    if r < 0.15:
        return b"null"
    if r < 0.25:
        return gen_value(3)
    if r < 0.55:  # well-formed, with the variations that must still be accepted
        mem = [b'"platform"' + ws() + b":" + ws() + R.choice([b'"fcm"', b'"\\u0066cm"']),
               b'"token"' + ws() + b":" + ws() + R.choice([b'"tok-%d"' % R.randint(0, 999),
                                                            gen_string(0.0)])]
        if R.random() < 0.3:
            mem.append(b'"x"' + ws() + b":" + ws() + gen_value(4))
        if R.random() < 0.2:
            mem.append(R.choice([b'"token"', b'"platform"']) + b":null")
        R.shuffle(mem)
        return b"{" + ws() + (ws() + b"," + ws()).join(mem) + ws() + b"}"
    mem = []
    for _ in range(R.randint(0, 3)):
        k = R.choice([b'"platform"', b'"token"', b'"platform"', b'"token"', b'"x"',
                      b'"Platform"', b'"\\u0074oken"'])
        v = R.choice([b'"fcm"', b'"fcm"', b'"apns"', b'"FCM"', b'"\\u0066cm"', b'""', b"null",
                      b"1", b"[]", b'"tok-%d"' % R.randint(0, 999), gen_string(0.0)])
        mem.append(ws() + k + ws() + b":" + ws() + v + ws())
    return b"{" + b",".join(mem) + b"}"


def gen_envelope():
    global NOISE
    saved, NOISE = NOISE, (1.0 if R.random() < 0.25 else 0.0)
    try:
        return gen_envelope_noisy()
    finally:
        NOISE = saved


def gen_close_code_clean():
    if NOISE:
        return gen_close_code()
    return R.choice([b"0", b"null", b"1000", b"4000", b"65535", str(R.randint(0, 65535)).encode()])


def gen_envelope_noisy():
    mem = []
    if R.random() < 0.7:  # most real envelopes address a phone
        mem.append(ws() + b'"conn_id"' + ws() + b":" + ws() + gen_conn_id() + ws())
        if R.random() < 0.6:
            mem.append(ws() + b'"frame"' + ws() + b":" + ws() + gen_value(1) + ws())
    for _ in range(R.randint(0, 4)):
        key = R.choice(KEYS) if R.random() < 0.8 else R.choice(ODD_KEYS)
        if key in (b'"conn_id"', b'"conn\\u005fid"', b'"Conn_ID"'):
            val = gen_conn_id()
        elif key in (b'"close_code"', b'"close\\u005Fcode"'):
            val = gen_close_code_clean()
        elif key in (b'"push_wake"', b'"push\\u005fwake"'):
            val = gen_push_wake()
        elif R.random() < 0.1:
            val = b"null"
        else:
            val = gen_value(1)
        mem.append(ws() + key + ws() + b":" + ws() + val + ws())
    R.shuffle(mem)
    doc = ws() + b"{" + b",".join(mem) + b"}" + ws()
    if R.random() < 0.03 * NOISE:
        doc = R.choice([b"[" + doc + b"]", b"null", b"1", b'"x"', doc + b"}", doc + b"x"])
    return doc


MUT_BYTES = b'{}[],:"\\ \t\n0123456789-+.eEtrufalsn\x00\x1f\x7f\x80\xc3\xa4\xe2\xed\xff'


SHAPE_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ ~{}:,"


def gen_routed_shape():
    """The exact form binaries send, {"conn_id":"..","frame":..}: the relay's one-pass
    route (envelope_routed_shape), which the driver holds to envelope_scan."""
    cid = "".join(R.choice(SHAPE_ID_CHARS) for _ in range(R.randint(1, 24)))
    return b'{"conn_id":"' + cid.encode() + b'","frame":' + gen_value(1) + b"}"


def mutate(b):
    b = bytearray(b)
    for _ in range(R.randint(1, 3)):
        op = R.randrange(6)
        i = R.randint(0, len(b))
        if op == 0 and b:
            del b[min(i, len(b) - 1)]
        elif op == 1:
            b[i:i] = bytes([R.choice(MUT_BYTES)])
        elif op == 2 and b:
            b[min(i, len(b) - 1)] = R.choice(MUT_BYTES)
        elif op == 3:
            del b[i:]
        elif op == 4 and b:
            j = R.randint(0, len(b))
            lo, hi = min(i, j), max(i, j)
            b[hi:hi] = b[lo:hi][:64]
        elif op == 5:
            b[i:i] = R.choice(ESCAPES + BAD_ESCAPES).encode() if R.random() < 0.5 else R.choice(UTF8_BAD)
    return bytes(b)


CURATED = [
    b"", b" ", b"{}", b"[]", b"null", b"0", b"-0", b"1e999", b"NaN", b"Infinity", b"-Infinity",
    b'"\\ud800"', b'"\\udc00\\ud800"', b'"\xed\xa0\x80"', b'{"a":1,"a":2}', b"\xef\xbb\xbf{}",
    b"[1,]", b"01", b"1.", b".1", b'"\x7f"', b'"\x1f"', b" \t\n\r1 \t\n\r", b"\x0c1", b"1" * 5000,
    b'{"conn_id":"a","frame":1}', b'{"conn_id":"a","conn_id":null,"frame":1}',
    b'{"conn_id":"a","close_code":-0}', b'{"conn_id":"a","close_code":65535}',
    b'{"conn_id":"a","close_code":1.0}', b'{"push_wake":{"platform":"fcm","token":"t"}}',
    b'{"push_wake":{"platform":"fcm","token":""}}', b'{"conn\\u005fid":"a","frame":[1]}',
    b'{"conn_id":"\\ud800\\udc00","frame":{}}', b'{"conn_id":"x\\ud800y","frame":{}}',
    b'{"conn_id":"a","frame":{"s":"}\\"frame\\":1"}}', b'{"Conn_ID":"a","frame":1}',
    b"[" * 300 + b"]" * 300, b'{"conn_id":"a","frame":' + b"[" * 300 + b"]" * 300 + b"}",
]


def inputs():
    out = list(CURATED)
    for _ in range(ROUNDS):
        docs = [gen_document() for _ in range(2500)]
        envs = [gen_envelope() for _ in range(3000)]
        shapes = [gen_routed_shape() for _ in range(600)]
        out += docs + envs + shapes
        out += [mutate(R.choice(docs)) for _ in range(1500)]
        out += [mutate(R.choice(envs)) for _ in range(2500)]
        out += [mutate(R.choice(shapes)) for _ in range(600)]
    return out


def main():
    driver = sys.argv[1]
    cases = inputs()
    payload = b"".join(struct.pack("<I", len(c)) + c for c in cases)
    proc = subprocess.run([driver], input=payload, stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        print("json_verdict exited with %d" % proc.returncode)
        print("json differential: 0 passed, %d failed" % len(cases))
        return 1
    got = proc.stdout.decode("ascii").splitlines()
    if len(got) != len(cases):
        print("json_verdict printed %d lines for %d inputs" % (len(got), len(cases)))
        print("json differential: 0 passed, %d failed" % len(cases))
        return 1

    passed = failed = skipped = 0
    valid_count = {True: 0, False: 0}
    kinds = {}
    faildir = os.path.join(os.path.dirname(os.path.abspath(driver)), "failures")
    for n, (b, line) in enumerate(zip(cases, got)):
        try:
            want = model(b)
        except Skip:
            skipped += 1
            continue
        valid_count[want[0] == "1"] += 1
        kind = want.split(" ")[1]
        kinds[kind] = kinds.get(kind, 0) + 1
        if line == want:
            passed += 1
            continue
        failed += 1
        if failed <= 10:
            print("MISMATCH #%d input=%r" % (n, b[:300]))
            print("   ours: %s" % line)
            print("  model: %s" % want)
        os.makedirs(faildir, exist_ok=True)
        with open(os.path.join(faildir, "case-%05d" % n), "wb") as f:
            f.write(b)
    print("json differential: seed %d, %d inputs (%d valid JSON, %d invalid), kinds %s, %d skipped"
          % (SEED, len(cases), valid_count[True], valid_count[False],
             " ".join("%s=%d" % kv for kv in sorted(kinds.items())), skipped))
    if failed:
        print("failing inputs saved under %s" % faildir)
    print("json differential: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
