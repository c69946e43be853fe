#!/usr/bin/env bash
# Log-key allowlist (reference §9, docs/logging.md): every structured key the relay can
# log is a string literal from the allowlist, so no code path can put a token, a payload
# or a header under a key nobody reviewed, and every message is a literal event name.
#
# Scans src/**/*.c and src/**/*.h (not src/core/log.h, which defines the macros) with a
# small C tokenizer, so comments and string contents never count, and fails on:
#   - a KV_STR/KV_BYTES/KV_SPAN/KV_INT/KV_UINT whose key is not one string literal from
#     the allowlist (boot keys only in src/main.c and src/config/);
#   - a LOG_INFO/LOG_WARN/LOG_ERROR whose message is not string literal(s);
#   - anything that builds or emits log fields around those macros: LOG_KV_* used by
#     hand, log_event called directly, a KV_/LOG_ macro named without a call;
#   - in src/config/, a boot-refusal key (field_add's key, a .key/->key
#     assignment) or message (refusal_begin, ->msg) that is not a literal.
# The one generic forwarding site allowed is src/main.c log_refusal(), which logs the
# refusal src/config/ built: its keys and message are checked at those literals.
#
# Before the real scan it runs the checker on inline samples that must be flagged (and
# one that must not), so a broken tokenizer cannot make the check pass on nothing.
# Last line: "log keys: N passed, N failed" (N = checked sites and self-tests).
set -uo pipefail
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 - <<'PY'
import os
import re
import sys

RUNTIME_KEYS = set("""
    server_id conn_id binary_conn_id device_name remote binary_version err path from to
    close_code token_fp duration fcm_message_id worker owner fix pid stage not_after sessions connections""".split())
BOOT_KEYS = set("""
    version mode listen domain cert_cache https_proxy_protocol env_var reason fix
    effective_uid value addr unexpected_ports expected_ports bypass_env_var workers""".split())
BOOT_FILES = {"src/main.c"}
BOOT_DIR = "src/config/"  # the configuration module: every file builds boot refusals
SKIP_FILES = {"src/core/log.h"}  # defines the macros: its parameters are not literals
LOG_IMPL = "src/core/log.c"

KV_MACROS = {"KV_STR", "KV_BYTES", "KV_SPAN", "KV_INT", "KV_UINT"}
LOG_MACROS = {"LOG_INFO", "LOG_WARN", "LOG_ERROR"}
RAW_KV = {"LOG_KV_STR", "LOG_KV_BYTES", "LOG_KV_INT", "LOG_KV_UINT"}
# main.c log_refusal: the only key and message that may be expressions
FORWARD = ("src/main.c", "log_refusal")
FORWARD_KEY = "r->fields[i].key"
FORWARD_MSG = "r->msg"

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<str>(?:u8|[uUL])?"(?:\\.|[^"\\\n])*")
  | (?P<chr>(?:u8|[uUL])?'(?:\\.|[^'\\\n])*')
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<num>\.?\d(?:[eEpP][+-]|[\w.])*)
  | (?P<punct>->|\+\+|--|<<=|>>=|<<|>>|[-+*/%&|^!=<>]=|&&|\|\||\.\.\.|\#\#|\S)
""", re.S | re.X)


class Tok:
    __slots__ = ("kind", "text", "line", "func", "depth")

    def __init__(self, kind, text, line):
        self.kind, self.text, self.line = kind, text, line
        self.func, self.depth = None, 0


def tokenize(src):
    toks, pos, line = [], 0, 1
    while pos < len(src):
        m = TOKEN.match(src, pos)
        kind = m.lastgroup
        if kind not in ("ws", "comment"):
            toks.append(Tok(kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    # Brace depth and enclosing function of every token: a function is the last
    # "name (" seen at depth 0 before its body's "{".
    depth, paren, cand, func = 0, 0, None, None
    for i, t in enumerate(toks):
        if t.text == "(":
            if depth == 0 and paren == 0 and i and toks[i - 1].kind == "ident":
                cand = toks[i - 1].text
            paren += 1
        elif t.text == ")":
            paren = max(0, paren - 1)
        elif t.text == "{":
            if depth == 0:
                func = cand
            depth += 1
        elif t.text == "}":
            depth = max(0, depth - 1)
            if depth == 0:
                func, cand = None, None
        elif t.text == ";" and depth == 0:
            cand = None
        t.func, t.depth = func, depth
    return toks


def call_args(toks, i):
    """Arguments of the call whose name is toks[i], as token lists; None if no call."""
    if i + 1 >= len(toks) or toks[i + 1].text != "(":
        return None
    args, cur, depth = [], [], 0
    for t in toks[i + 2:]:
        if t.text in "([{":
            depth += 1
        elif t.text in ")]}":
            if depth == 0:
                args.append(cur)
                return args
            depth -= 1
        elif t.text == "," and depth == 0:
            args.append(cur)
            cur = []
            continue
        cur.append(t)
    return None  # unbalanced: reported by the caller


def text(ts):
    out = ""
    for t in ts:
        if out and t.kind in ("ident", "num") and out[-1:].isalnum():
            out += " "
        out += t.text
    return out


def plain_literal(ts):
    """The value of one unprefixed string literal without escapes, else None."""
    if len(ts) != 1 or ts[0].kind != "str" or not ts[0].text.startswith('"'):
        return None
    v = ts[0].text[1:-1]
    return None if "\\" in v else v


def literals_only(ts):
    return bool(ts) and all(t.kind == "str" for t in ts)


def check_source(path, src):
    """Returns (passed_sites, failures) where failures are 'path:line: why'."""
    boot_module = path.startswith(BOOT_DIR)
    allowed = RUNTIME_KEYS | (BOOT_KEYS if path in BOOT_FILES or boot_module else set())
    toks = tokenize(src)
    passed, fails = 0, []

    def site(ok, t, why):
        nonlocal passed
        if ok:
            passed += 1
        else:
            fails.append(f"{path}:{t.line}: {why}")

    def key_ok(arg, what):
        v = plain_literal(arg)
        if v is None:
            return False, f"{what} key is not a string literal: {text(arg) or '(none)'}"
        if v not in allowed:
            extra = " (a boot key, allowed only in src/main.c and src/config/)" \
                if v in BOOT_KEYS else ""
            return False, f"{what} key \"{v}\" is not in the allowlist{extra}"
        return True, ""

    forwarding = (path, None)
    for i, t in enumerate(toks):
        if t.kind != "ident":
            continue
        name = t.text
        in_forward = (path, t.func) == FORWARD
        if name in KV_MACROS or name in LOG_MACROS:
            args = call_args(toks, i)
            if not args:
                site(False, t, f"{name} not called with arguments (aliased or unbalanced)")
                continue
            if name in KV_MACROS:
                if in_forward and name == "KV_STR" and text(args[0]) == FORWARD_KEY \
                        and forwarding[1] is None:
                    forwarding = (path, t.line)  # once: src/config/'s literals are checked
                    site(True, t, "")
                    continue
                ok, why = key_ok(args[0], name)
                site(ok, t, why)
            else:
                site(literals_only(args[0]), t,
                     f"{name} message is not a string literal: {text(args[0])}")
        elif name in RAW_KV and path != LOG_IMPL:
            site(False, t, f"{name} used by hand: build fields with the KV_* macros")
        elif name == "log_event" and path != LOG_IMPL:
            args = call_args(toks, i)
            ok = in_forward and args is not None and len(args) >= 2 \
                and text(args[1]) == FORWARD_MSG
            site(ok, t, "log_event called directly: use LOG_INFO/LOG_WARN/LOG_ERROR")
        elif boot_module and t.depth > 0:
            if name == "field_add" and t.func != "field_add":
                args = call_args(toks, i)
                if args is None or len(args) < 2:
                    site(False, t, "field_add call not understood")
                else:
                    ok, why = key_ok(args[1], "boot refusal")
                    site(ok, t, why)
            elif name == "refusal_begin":
                args = call_args(toks, i)
                ok = args is not None and len(args) == 3 and \
                    (literals_only(args[2]) or text(args[2]) == "NULL")
                site(ok, t, "refusal_begin message is not a string literal")
            elif name in ("key", "msg") and i and toks[i - 1].text in (".", "->") \
                    and i + 1 < len(toks) and toks[i + 1].text == "=":
                rhs, depth = [], 0
                for r in toks[i + 2:]:
                    if r.text in "([{":
                        depth += 1
                    elif r.text in ")]}":
                        if depth == 0:
                            break
                        depth -= 1
                    elif r.text in (";", ",") and depth == 0:
                        break
                    rhs.append(r)
                # the two setters forward their parameter; their callers are checked
                if name == "key" and t.func == "field_add" and text(rhs) == "key":
                    site(True, t, "")
                elif name == "msg" and t.func == "refusal_begin" and text(rhs) == "msg":
                    site(True, t, "")
                elif name == "key":
                    ok, why = key_ok(rhs, "boot refusal")
                    site(ok, t, why)
                else:
                    site(literals_only(rhs), t, "boot refusal message is not a string literal")
    return passed, fails


SAMPLES = [
    # (path, source, should be flagged)
    ("src/relay/sample.c", """
        /* KV_STR("token", t) in a comment, and "KV_STR(tok, x)" in a string */
        static void f(const char *id, struct span ip) {
            const char *s = "LOG_INFO(msg)";
            LOG_INFO("server_claimed", KV_STR("server_id", id), KV_SPAN("remote", ip),
                     KV_UINT("close_code", 1000));
            LOG_WARN("rate" "_limited", KV_BYTES("remote", s, 4));
        }""", False),
    ("src/relay/sample.c", 'void f(const char *k) { LOG_INFO("x", KV_STR(k, "v")); }', True),
    ("src/relay/sample.c", 'void f(void) { LOG_INFO("x", KV_STR("token", t)); }', True),
    ("src/relay/sample.c", 'void f(void) { LOG_INFO("x", KV_STR("version", v)); }', True),
    ("src/relay/sample.c", 'void f(void) { LOG_INFO("x", KV_INT(KEY_CODE, 1)); }', True),
    ("src/relay/sample.c", 'void f(void) { LOG_INFO("x", KV_STR("server_id" "", v)); }', True),
    ("src/relay/sample.c", 'void f(const char *m) { LOG_WARN(m, KV_STR("err", e)); }', True),
    ("src/relay/sample.c", '#define K KV_STR\nvoid f(void) { LOG_INFO("x", K("a", v)); }', True),
    ("src/relay/sample.c", 'void f(void) { log_event(LOG_LEVEL_INFO, "x", kvs, 1); }', True),
    ("src/relay/sample.c", 'void f(void) { struct log_kv k = { "a", LOG_KV_STR }; }', True),
    ("src/main.c", 'void g(void) { LOG_INFO("starting", KV_STR("version", v)); }', False),
    ("src/main.c", """void other(const struct boot_refusal *r) {
            kvs[i] = KV_STR(r->fields[i].key, r->fields[i].value); }""", True),
    ("src/config/boot.c", 'static int c(struct boot_refusal *r) { field_add(r, "password", "%s", p); }', True),
    ("src/config/boot.c", 'static int c(struct boot_refusal *r) { r->fields[0].key = name; }', True),
    ("src/config/boot.c", 'static int c(struct boot_refusal *r) { refusal_begin(r, 2, why); }', True),
]


def self_test():
    ok = bad = 0
    for n, (path, src, flag) in enumerate(SAMPLES):
        _, fails = check_source(path, src)
        if bool(fails) == flag:
            ok += 1
        else:
            bad += 1
            print(f"log keys: self-test sample {n} ({path}) was "
                  f"{'not flagged' if flag else 'flagged: ' + '; '.join(fails)}")
    return ok, bad


def main():
    ok, bad = self_test()
    files = []
    for root, _, names in os.walk("src"):
        for n in sorted(names):
            p = os.path.join(root, n)
            if n.endswith((".c", ".h")) and p not in SKIP_FILES:
                files.append(p)
    sites = 0
    for p in sorted(files):
        with open(p, encoding="utf-8", errors="replace") as f:
            passed, fails = check_source(p, f.read())
        sites += passed + len(fails)
        ok += passed
        bad += len(fails)
        for why in fails:
            print(why)
    if sites == 0:
        print("log keys: no logging call found under src/: the scan is broken")
        bad += 1
    print(f"log keys: {sites} sites in {len(files)} files, {len(SAMPLES)} self-test samples")
    print(f"log keys: {ok} passed, {bad} failed")
    return 1 if bad else 0


sys.exit(main())
PY
