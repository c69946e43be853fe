"""Push wake end to end (reference §3.1, §6.2, §7.2, §7.3, §8.2, §9; issue #14).

A binary asks for a wake with {"push_wake":{"platform":"fcm","token":...}}; the relay
fetches an OAuth2 access token with a JWT-bearer assertion and POSTs the FCM message.
Here both Google endpoints are fakefcm.FakeGoogle on 127.0.0.1 over TLS, its
certificate signed by a CA made for the test run (--outbound-ca-file), the key's
token_uri pointing at it and --fcm-endpoint at its send path. The fake checks the
assertion (signature with the public key, alg, kid, iss, scope, aud, iat/exp), the
form, the bearer token and the exact message body; its complaints fail the test.

Every test ends by checking that no secret (device tokens, access tokens, the key,
the credential's email, FCM's free text) appears in anything the relay printed or in
a scrape of /metrics.
"""

import json
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from fakefcm import (FCM_SECRET_MESSAGE, MESSAGE_ID, FakeGoogle, make_credentials, make_pki)
from relayctl import abort, expect_nothing, free_port, unique_id, wait_until

OUTCOMES = ("sent", "unregistered", "send_failed", "token_fetch_failed", "dropped")
TIMEOUT_FLAG_MS = 1000  # --fcm-timeout for the timeout test


def token_fp(token: str) -> str:
    import hashlib
    return hashlib.sha256(token.encode()).hexdigest()[:8]


@pytest.fixture(scope="module")
def pki():
    d = Path(tempfile.mkdtemp(prefix="pyrelay-push-"))
    d.chmod(0o755)  # the relay runs as nobody and reads the CA bundle in here
    yield make_pki(d / "pki")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake(pki):
    f = FakeGoogle(pki).start()
    yield f
    f.stop()
    assert not f.errors, "the fake Google endpoints refused what the relay sent:\n" + "\n".join(f.errors)


def start_push_relay(relay_factory, fake, pki, token_path="/token", creds=None, args=(), env_extra=None, **kw):
    """A relay with push on against the fake (metrics on)."""
    if creds is None:
        creds = make_credentials(f"https://127.0.0.1:{fake.port}{token_path}")
    fake.creds = creds
    env = {"PYRYCODE_RELAY_FCM_CREDENTIALS": creds.json, **(env_extra or {})}
    argv = ["--fcm-endpoint", fake.send_url, "--outbound-ca-file", str(pki.ca_path), *args]
    return relay_factory.start(args=argv, env=env, metrics=True, **kw)


def wake(binary, token: str, platform: str = "fcm") -> None:
    binary.send_text(json.dumps({"push_wake": {"platform": platform, "token": token}}))


def push_cells(relay) -> dict:
    """pyrycode_relay_push_wakes_total by outcome ({} when the family is absent)."""
    cells = {}
    for line in relay.metrics_text().splitlines():
        m = re.match(r'^pyrycode_relay_push_wakes_total\{outcome="([a-z_]+)"\} (\S+)$', line)
        if m:
            cells[m.group(1)] = int(float(m.group(2)))
    return cells


def wait_cells(relay, want: dict, timeout: float = 10.0) -> dict:
    """Until every outcome cell equals want (missing ones: 0)."""
    full = {o: want.get(o, 0) for o in OUTCOMES}
    got = {}

    def ok():
        nonlocal got
        got = push_cells(relay)
        return got == full

    try:
        wait_until(ok, timeout, interval=0.05, what="push_wakes_total")
    except TimeoutError:
        raise AssertionError(f"push_wakes_total {got}, expected {full}") from None
    return got


def assert_no_secrets(relay, fake, extra=()) -> None:
    text = relay.stderr_text() + "\n" + relay.stdout_text()
    scrape = relay.metrics_text() if relay.alive() else ""
    for s in list(fake.secrets()) + list(extra):
        assert s not in text, f"secret {s[:24]!r}... printed by the relay"
        assert s not in scrape, f"secret {s[:24]!r}... in /metrics"


def sent_line(relay, sid, token, since=0, timeout=10.0):
    return relay.wait_log("push_wake_sent", since=since, timeout=timeout, server_id=sid, token_fp=token_fp(token))


def failed_line(relay, sid, token, since=0, timeout=10.0):
    return relay.wait_log("push_wake_send_failed", since=since, timeout=timeout, server_id=sid,
                          token_fp=token_fp(token))


GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|µs|ms|s)|\d+m\d+(\.\d+)?s)$")


# --------------------------------------------------------------------------- sent


def test_sent_with_message_id_and_cached_token(relay_factory, fake, pki, server_id):
    relay = start_push_relay(relay_factory, fake, pki)
    assert push_cells(relay) == {o: 0 for o in OUTCOMES}, "all five cells exist at 0 when push is on"
    b = relay.ws_server(server_id)
    # a token with characters JSON must escape, as Go's encoder escapes them
    tokens = ['ok-dEvIcE:tok_en-1', 'ok-"quoted"\\back<&>\u00e9']
    for i, tok in enumerate(tokens):
        wake(b, tok)
        rec = sent_line(relay, server_id, tok)
        assert rec["level"] == "INFO"
        assert rec["fcm_message_id"] == MESSAGE_ID
        assert GO_DURATION.match(rec["duration"]), rec
        assert "err" not in rec
        wait_cells(relay, {"sent": i + 1})
    # one token fetch serves both sends (cached until shortly before expiry)
    assert len(fake.requests("/token")) == 1
    assert fake.sent_tokens == tokens
    expect_nothing(b)  # the binary is told nothing, and stays connected
    assert_no_secrets(relay, fake)


@pytest.mark.parametrize("prefix,has_id", [("chunked-", True), ("okbad-", False), ("okbig-", False),
                                           ("hostile-", False)])
def test_sent_reply_shapes(relay_factory, fake, pki, server_id, prefix, has_id):
    """A 2xx is sent whatever its body; the id is kept only when well formed (chunked
    replies are read too; a reply is read to 4 KiB at most)."""
    relay = start_push_relay(relay_factory, fake, pki)
    b = relay.ws_server(server_id)
    tok = prefix + unique_id("t")
    wake(b, tok)
    rec = sent_line(relay, server_id, tok)
    if has_id:
        assert rec["fcm_message_id"] == MESSAGE_ID
    else:
        assert "fcm_message_id" not in rec, rec
    wait_cells(relay, {"sent": 1})
    assert_no_secrets(relay, fake)


def test_token_expiry_refetches(relay_factory, fake, pki, server_id):
    """Cached until 10 s before expiry: expires_in 13 gives three seconds of reuse."""
    fake.expires_in = 13
    relay = start_push_relay(relay_factory, fake, pki)
    b = relay.ws_server(server_id)
    wake(b, "ok-a")
    sent_line(relay, server_id, "ok-a")
    wake(b, "ok-b")
    sent_line(relay, server_id, "ok-b")
    assert len(fake.requests("/token")) == 1
    time.sleep(3.3)
    wake(b, "ok-c")
    sent_line(relay, server_id, "ok-c")
    assert len(fake.requests("/token")) == 2
    wait_cells(relay, {"sent": 3})
    assert_no_secrets(relay, fake)


def test_send_continues_after_binary_disconnects(relay_factory, fake, pki, server_id):
    relay = start_push_relay(relay_factory, fake, pki)
    b = relay.ws_server(server_id)
    tok = "hold-" + unique_id("t")
    wake(b, tok)
    fake.wait_held(1)
    abort(b)
    relay.wait_log("server_released", server_id=server_id)
    fake.release()
    rec = sent_line(relay, server_id, tok)
    assert rec["fcm_message_id"] == MESSAGE_ID
    wait_cells(relay, {"sent": 1})
    assert_no_secrets(relay, fake)


# --------------------------------------------------------------------------- failures


def test_unregistered(relay_factory, fake, pki, server_id):
    relay = start_push_relay(relay_factory, fake, pki)
    b = relay.ws_server(server_id)
    tok = "unreg-" + unique_id("t")
    wake(b, tok)
    rec = failed_line(relay, server_id, tok)
    assert rec["level"] == "WARN"
    assert rec["err"] == "fcm send failed: status 404 (NOT_FOUND, UNREGISTERED)"
    assert GO_DURATION.match(rec["duration"]), rec
    wait_cells(relay, {"unregistered": 1})
    expect_nothing(b)
    assert_no_secrets(relay, fake)


@pytest.mark.parametrize("prefix,err", [
    ("e5xx-", "fcm send failed: status 503 (UNAVAILABLE)"),
    ("redir-", "fcm send failed: status 302"),         # never followed
    ("badjson-", "fcm send failed: status 500"),       # no reason in a body that is not JSON
    ("big-", "fcm send failed: status 404"),           # UNREGISTERED beyond the 4 KiB read: not seen
])
def test_send_failed(relay_factory, fake, pki, server_id, prefix, err):
    relay = start_push_relay(relay_factory, fake, pki)
    b = relay.ws_server(server_id)
    tok = prefix + unique_id("t")
    wake(b, tok)
    rec = failed_line(relay, server_id, tok)
    assert rec["err"] == err
    wait_cells(relay, {"send_failed": 1})
    assert not fake.requests("/elsewhere"), "a redirect was followed"
    assert_no_secrets(relay, fake)


def test_send_timeout(relay_factory, fake, pki, server_id):
    relay = start_push_relay(relay_factory, fake, pki, args=["--fcm-timeout", f"{TIMEOUT_FLAG_MS}ms"])
    b = relay.ws_server(server_id)
    tok = "slow-" + unique_id("t")
    t0 = time.monotonic()
    wake(b, tok)
    rec = failed_line(relay, server_id, tok)
    took = time.monotonic() - t0
    assert rec["err"] == f'fcm send failed: Post "{fake.send_url}": Client.Timeout exceeded', rec
    assert TIMEOUT_FLAG_MS / 1000 * 0.9 <= took < TIMEOUT_FLAG_MS / 1000 + 2.0, took
    wait_cells(relay, {"send_failed": 1})
    expect_nothing(b)  # the binary was never held up
    assert_no_secrets(relay, fake)


def test_token_fetch_failed(relay_factory, fake, pki, server_id):
    relay = start_push_relay(relay_factory, fake, pki, token_path="/token-fail")
    b = relay.ws_server(server_id)
    for i, tok in enumerate(["ok-" + unique_id("a"), "ok-" + unique_id("b")]):
        wake(b, tok)
        rec = failed_line(relay, server_id, tok)
        assert rec["err"] == "fcm access-token fetch failed: status 500"  # only the status
        wait_cells(relay, {"token_fetch_failed": i + 1})
    # a failed fetch is not cached: each wake tried, and nothing was sent
    assert len(fake.requests("/token-fail")) == 2
    assert not fake.requests("/v1/")
    assert_no_secrets(relay, fake)


def test_endpoints_by_name(relay_factory, fake, pki, server_id):
    """Host names go through the resolver, SNI and name verification (the fake's
    certificate names localhost)."""
    creds = make_credentials(f"https://localhost:{fake.port}/token")
    fake.creds = creds
    relay = relay_factory.start(args=["--fcm-endpoint", f"https://localhost:{fake.port}/v1/projects/pyrycode-mobile/"
                                      "messages:send", "--outbound-ca-file", str(pki.ca_path)],
                                env={"PYRYCODE_RELAY_FCM_CREDENTIALS": creds.json}, metrics=True)
    b = relay.ws_server(server_id)
    tok = "ok-" + unique_id("t")
    wake(b, tok)
    sent_line(relay, server_id, tok)
    wait_cells(relay, {"sent": 1})
    assert fake.requests("/token")[0].headers["host"] == f"localhost:{fake.port}"
    assert_no_secrets(relay, fake)


def test_untrusted_server_certificate(relay_factory, fake, pki, server_id):
    """Without the test CA the fake's certificate does not verify: no token, no send."""
    creds = make_credentials(f"https://127.0.0.1:{fake.port}/token")
    fake.creds = creds
    relay = relay_factory.start(args=["--fcm-endpoint", fake.send_url],
                                env={"PYRYCODE_RELAY_FCM_CREDENTIALS": creds.json}, metrics=True)
    b = relay.ws_server(server_id)
    tok = "ok-" + unique_id("t")
    wake(b, tok)
    rec = failed_line(relay, server_id, tok)
    assert rec["err"] == "fcm access-token fetch failed"
    wait_cells(relay, {"token_fetch_failed": 1})
    assert not fake.records, "the fake saw a request over an unverified connection"
    assert_no_secrets(relay, fake)


# --------------------------------------------------------------------------- refusals


def test_rate_limited_per_server_id(relay_factory, fake, pki, server_id):
    """Burst 6 per server-id; the 7th is dropped, not queued; another id is unaffected."""
    relay = start_push_relay(relay_factory, fake, pki)
    b = relay.ws_server(server_id)
    toks = ["ok-" + unique_id(f"r{i}") for i in range(7)]
    for tok in toks:
        wake(b, tok)
    rec = relay.wait_log("binary_forwarder_push_wake_dropped", server_id=server_id)
    assert rec["err"] == "push_wake rate-limited for server-id"
    assert rec["level"] == "WARN" and rec.get("binary_conn_id")
    wait_cells(relay, {"sent": 6, "dropped": 1})
    assert len(relay.find_logs("binary_forwarder_push_wake_dropped")) == 1
    other = unique_id("other")
    b2 = relay.ws_server(other)
    wake(b2, "ok-other")
    sent_line(relay, other, "ok-other")
    wait_cells(relay, {"sent": 7, "dropped": 1})
    assert sorted(fake.sent_tokens) == sorted(toks[:6] + ["ok-other"])
    expect_nothing(b)
    assert_no_secrets(relay, fake)


def test_inflight_cap(relay_factory, fake, pki):
    """32 wakes in flight relay-wide (exact across workers); the 33rd is dropped; once
    they finish, wakes are admitted again."""
    relay = start_push_relay(relay_factory, fake, pki)
    ids = [unique_id(f"cap{i}") for i in range(6)]
    bins = [relay.ws_server(i) for i in ids]
    n = 0
    for k in range(33):  # 6 ids x 6 burst = 36 >= 33: the per-id limit never bites
        wake(bins[k % 6], f"hold-{k}-" + unique_id("t"))
        n += 1
    rec = relay.wait_log("binary_forwarder_push_wake_dropped", timeout=10)
    assert rec["err"] == "push_wake in-flight cap reached"
    fake.wait_held(32, timeout=20)
    time.sleep(0.3)
    assert len(relay.find_logs("binary_forwarder_push_wake_dropped")) == 1
    assert fake.held == 32
    wait_cells(relay, {"dropped": 1})
    fake.release()
    wait_cells(relay, {"sent": 32, "dropped": 1}, timeout=20)
    # room again
    wake(bins[5], "ok-after-cap")
    sent_line(relay, ids[5], "ok-after-cap")
    wait_cells(relay, {"sent": 33, "dropped": 1})
    assert_no_secrets(relay, fake)


def test_malformed_wakes_refused_and_not_counted(relay_factory, fake, pki, server_id):
    relay = start_push_relay(relay_factory, fake, pki)
    b = relay.ws_server(server_id)
    cases = [
        ({"push_wake": {"platform": "apns", "token": "ok-x"}}, "push_wake platform is not fcm"),
        ({"push_wake": {"platform": "FCM", "token": "ok-x"}}, "push_wake platform is not fcm"),
        ({"push_wake": {"platform": "fcm", "token": ""}}, "push_wake token is empty"),
        ({"push_wake": {"platform": "fcm"}}, "push_wake token is empty"),
        ({"push_wake": {"platform": "fcm", "token": 7}}, "push_wake token is not a string"),
        ({"push_wake": ["fcm"]}, "push_wake is not a JSON object"),
    ]
    for msg, err in cases:
        mark = relay.log_mark()
        b.send_text(json.dumps(msg))
        rec = relay.wait_log("binary_forwarder_push_wake_dropped", since=mark, server_id=server_id)
        assert rec["err"] == err, (msg, rec)
    expect_nothing(b)
    assert push_cells(relay) == {o: 0 for o in OUTCOMES}, "malformed wakes count nothing"
    assert not fake.records
    assert_no_secrets(relay, fake)


# --------------------------------------------------------------------------- shutdown


def test_shutdown_cancels_inflight_send(relay_factory, fake, pki, server_id):
    """SIGTERM: the drain does not wait for FCM; the held send ends at once as
    send_failed (context canceled), logged before exit 0."""
    relay = start_push_relay(relay_factory, fake, pki)
    b = relay.ws_server(server_id)
    tok = "hold-" + unique_id("t")
    wake(b, tok)
    fake.wait_held(1)
    abort(b)  # no close handshake to wait for: the drain is quick
    relay.wait_log("server_released", server_id=server_id)
    time.sleep(0.3)
    assert not relay.find_logs("push_wake_send_failed"), "the send must still be in flight"
    t0 = time.monotonic()
    relay.signal(signal.SIGTERM)
    rc = relay.wait_exit(8)
    took = time.monotonic() - t0
    assert rc == 0
    assert took < 3.0, f"shutdown took {took:.1f}s: the in-flight send was waited for"
    rec = failed_line(relay, server_id, tok, timeout=1)
    assert rec["err"] == f'fcm send failed: Post "{fake.send_url}": context canceled'
    lines = [r["msg"] for r in relay.log_records()]
    assert lines.index("push_wake_send_failed") < lines.index("shutdown complete")
    assert_no_secrets(relay, fake)


# --------------------------------------------------------------------------- boot


def test_boot_push_on_and_key_forms(relay_factory, fake, pki):
    """Push on: no "push off" line; PKCS#1 keys work as PKCS#8 ones do."""
    creds = make_credentials(f"https://127.0.0.1:{fake.port}/token", key_format="pkcs1")
    relay = start_push_relay(relay_factory, fake, pki, creds=creds)
    assert not [r for r in relay.log_records() if r.get("msg", "").startswith("push off")]
    sid = unique_id("pkcs1")
    b = relay.ws_server(sid)
    wake(b, "ok-pkcs1")
    sent_line(relay, sid, "ok-pkcs1")
    assert_no_secrets(relay, fake)


def test_boot_refusals(relay_factory, fake, pki):
    base = ["--insecure-listen", f"127.0.0.1:{free_port()}", "--metrics-listen="]
    ec_creds = make_credentials(fake.token_url, key_format="ec")
    http_creds = make_credentials("http://127.0.0.1:1/token")
    good = make_credentials(fake.token_url)
    for creds in (ec_creds, http_creds):
        res = relay_factory.boot(base, env={"PYRYCODE_RELAY_FCM_CREDENTIALS": creds.json})
        assert res.returncode == 2, res.stderr
        rec = [r for r in res.log_records if r.get("msg") == "refusing to start: invalid env-var config"]
        assert rec and rec[0]["reason"] == "not a service-account JSON key (value withheld)", res.stderr
        for line in creds.pem.splitlines()[1:-1]:
            assert line not in res.stderr
        assert creds.email not in res.stderr
    # an extra CA bundle that cannot be loaded: the sender cannot be built (exit 2)
    res = relay_factory.boot(base + ["--outbound-ca-file", "/nonexistent/ca.pem"],
                             env={"PYRYCODE_RELAY_FCM_CREDENTIALS": good.json})
    assert res.returncode == 2, res.stderr
    rec = [r for r in res.log_records if r.get("msg") == "refusing to start: cannot build the FCM push sender"]
    assert rec and "/nonexistent/ca.pem" in rec[0]["err"], res.stderr
    # --fcm-endpoint must be https://
    res = relay_factory.boot(base + ["--fcm-endpoint", "http://127.0.0.1:1/send"])
    assert res.returncode == 2
    assert "invalid value \"http://127.0.0.1:1/send\" for flag -fcm-endpoint: URL is not https://" in res.stderr
