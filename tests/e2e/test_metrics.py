"""/metrics end to end (reference §1.5, §8.2; issue #4): the loopback responder's HTTP
behaviour, every reference series pre-created at 0, each counter cell moving exactly
when the reference says (and every other cell of the watched families staying put),
our own series, a body free of request data, `promtool check metrics` on a live
scrape, and a real Prometheus server scraping the relay with deploy/'s config."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from relayctl import (AT_CAP, CONFLICT, NO_SERVER, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, REPO_ROOT, RawConn, abort,
                      barrier, build_frame, claim, client_headers, close_and_wait, close_payload, directive, expect_close,
                      free_port, read_text, read_wrapped, register, route, server_headers, wait_until)

PROM_CT = "text/plain; version=0.0.4; charset=utf-8"

REFERENCE_FAMILIES = {
    "pyrycode_relay_connected_binaries": "gauge",
    "pyrycode_relay_connected_phones": "gauge",
    "pyrycode_relay_frames_forwarded_total": "counter",
    "pyrycode_relay_grace_expiries_total": "counter",
    "pyrycode_relay_ws_upgrade_attempts_total": "counter",
    "pyrycode_relay_register_failures_total": "counter",
}
# Families whose every cell a terminal-path test checks (exact deltas, the rest 0).
WATCHED = list(REFERENCE_FAMILIES) + ["pyrycode_relay_frames_dropped_total", "pyrycode_relay_connections_closed_total",
                                      "pyrycode_relay_phone_pauses_total"]
ENDPOINTS = ("server", "client")
OUTCOMES = ("accept", "reject_headers", "reject_409", "reject_404", "reject_429", "reject_rate_limit")
KINDS = ("no_server", "server_in_use", "phones_at_cap", "ratelimit")


def up(endpoint, outcome):
    return f'pyrycode_relay_ws_upgrade_attempts_total{{endpoint="{endpoint}",outcome="{outcome}"}}'


def fail(kind):
    return f'pyrycode_relay_register_failures_total{{kind="{kind}"}}'


def fwd(direction):
    return f'pyrycode_relay_frames_forwarded_total{{direction="{direction}"}}'


def drop(reason):
    return f'pyrycode_relay_frames_dropped_total{{reason="{reason}"}}'


def closed(cls):
    return f'pyrycode_relay_connections_closed_total{{class="{cls}"}}'


BINARIES, PHONES = "pyrycode_relay_connected_binaries", "pyrycode_relay_connected_phones"
GRACE = "pyrycode_relay_grace_expiries_total"

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse(text: str):
    """(families {name: type}, samples {series text: value}); checks the shape too."""
    families, samples, helped = {}, {}, set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert name in helped, f"TYPE without HELP for {name}"
            assert name not in families, f"family {name} declared twice"
            families[name] = typ
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        series = m.group(1) + (m.group(2) or "")
        assert series not in samples, f"duplicate series {series}"
        samples[series] = float(m.group(3))
    return families, samples


def family_of(series: str) -> str:
    return series.split("{", 1)[0]


def scrape(relay) -> dict:
    return parse(relay.metrics_text())[1]


def watched(samples: dict) -> dict:
    return {k: v for k, v in samples.items() if family_of(k) in WATCHED}


def assert_deltas(before: dict, after: dict, expected: dict):
    """Every watched cell moved by exactly expected[cell] (default 0)."""
    b, a = watched(before), watched(after)
    assert set(b) == set(a)
    for k in expected:
        assert k in a, f"no series {k}"
    wrong = {k: (a[k] - b[k], expected.get(k, 0)) for k in a if a[k] - b[k] != expected.get(k, 0)}
    assert not wrong, "cells moved unexpectedly (got, want): " + json.dumps(wrong, indent=1)


def settle(relay, expected_before: dict, expected: dict, timeout: float = 5.0) -> dict:
    """Scrape until the expected deltas show (counters land a loop iteration after the
    event), then check them and every other watched cell exactly."""
    after = None

    def ok():
        nonlocal after
        after = scrape(relay)
        return all(after.get(k, 0) - expected_before.get(k, 0) == v for k, v in expected.items())

    try:
        wait_until(ok, timeout, interval=0.05, what="metrics to move")
    except TimeoutError:
        pass  # assert_deltas below says which cells did not move as expected
    assert_deltas(expected_before, after, expected)
    return after


@pytest.fixture
def mrelay(relay_factory):
    return relay_factory.start(metrics=True, args=["--rate-limit-burst", "0"])


# ---------------------------------------------------------------- the responder


def metrics_conn(relay) -> RawConn:
    return RawConn("127.0.0.1", relay.metrics_port)


def test_every_reference_series_precreated_at_zero(mrelay):
    r = metrics_conn(mrelay).request("GET", "/metrics", {"Connection": "close"})
    assert r.status == 200
    assert r.header("Content-Type") == PROM_CT
    families, samples = parse(r.body.decode())
    for name, typ in REFERENCE_FAMILIES.items():
        assert families.get(name) == typ, (name, families.get(name))
    for e in ENDPOINTS:
        for o in OUTCOMES:
            assert samples[up(e, o)] == 0
    assert len([s for s in samples if family_of(s) == "pyrycode_relay_ws_upgrade_attempts_total"]) == 12
    for k in KINDS:
        assert samples[fail(k)] == 0
    assert len([s for s in samples if family_of(s) == "pyrycode_relay_register_failures_total"]) == 4
    assert samples[fwd("phone_to_binary")] == 0 and samples[fwd("binary_to_phone")] == 0
    assert samples[GRACE] == 0 and samples[BINARIES] == 0 and samples[PHONES] == 0
    # no FCM credentials, so push is off: the family exists only when push is on
    # (reference §7.2; test_push.py checks its five cells with push on)
    assert "pyrycode_relay_push_wakes_total" not in families
    assert samples['promhttp_metric_handler_errors_total{cause="encoding"}'] == 0
    assert samples['promhttp_metric_handler_errors_total{cause="gathering"}'] == 0
    # our own families, all label-bounded
    for name in ("pyrycode_relay_bytes_received_total", "pyrycode_relay_bytes_sent_total",
                 "pyrycode_relay_outbox_bytes", "pyrycode_relay_phone_pauses_total", "pyrycode_relay_sends_total",
                 "pyrycode_relay_connections_open", "process_start_time_seconds", "process_open_fds",
                 "process_resident_memory_bytes"):
        assert name in families and name in samples, name
    assert samples['pyrycode_relay_build_info{version="dev"}'] == 1
    for fam in ("pyrycode_relay_worker_loop_iterations_total", "pyrycode_relay_worker_cqes_total",
                "pyrycode_relay_worker_io_uring_enters_total", "pyrycode_relay_worker_recv_buffer_exhausted_total"):
        assert f'{fam}{{worker="0"}}' in samples
    # batched wake-ups (ADR 19): the bound in force is the default, or 0 on a kernel
    # without IORING_FEAT_MIN_TIMEOUT; an idle relay is not batching
    assert families["pyrycode_relay_worker_waits_total"] == "counter"
    assert samples['pyrycode_relay_worker_batch_wait_seconds{worker="0"}'] in (0, 0.00025)
    assert samples['pyrycode_relay_worker_batching{worker="0"}'] == 0
    assert families["pyrycode_relay_worker_batch_backoffs_total"] == "counter"
    assert sum(v for k, v in samples.items() if k.startswith("pyrycode_relay_payload_pass_info{")) == 1
    assert families["pyrycode_relay_phone_to_binary_latency_seconds"] == "histogram"
    assert samples['pyrycode_relay_phone_to_binary_latency_seconds_bucket{le="+Inf"}'] == 0
    assert abs(samples["process_start_time_seconds"] - time.time()) < 60
    assert samples["process_open_fds"] > 3 and samples["process_resident_memory_bytes"] > 0


def test_http_behaviour(mrelay):
    c = metrics_conn(mrelay)
    # keep-alive: several requests on one connection, HEAD without a body
    r1 = c.request("GET", "/metrics")
    assert r1.status == 200 and not r1.header("Connection")
    r2 = c.request("HEAD", "/metrics")
    assert r2.status == 200 and int(r2.header("Content-Length")) > 1000
    r3 = c.request("GET", "/metrics?x=1")
    assert r3.status == 200
    # everything but /metrics is 404, on the same connection
    for target in ("/", "/healthz", "/metrics/", "/Metrics", "/v1/server"):
        r = c.request("GET", target)
        assert r.status == 404 and r.body == b"404 page not found\n", target
    r = c.request("GET", "/metrics", {"Connection": "close"})
    assert r.status == 200 and r.header("Connection") == "close"
    c.wait_closed(2, allow_data=True)
    c.close()
    # pipelined requests are answered in order
    with metrics_conn(mrelay) as p:
        p.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert p.read_http_response().status == 404
        assert p.read_http_response().status == 200
    # HEAD gets headers only on every path, so a pipelined request after it stays framed
    with metrics_conn(mrelay) as p:
        p.send(b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\nHEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        h404 = p.read_http_response(head_only=True)
        assert h404.status == 404 and h404.header("Content-Length") == str(len(b"404 page not found\n")), h404
        hmetrics = p.read_http_response(head_only=True)
        assert hmetrics.status == 200 and int(hmetrics.header("Content-Length")) > 1000, hmetrics
        r = p.read_http_response()
        assert r.status == 404 and r.body == b"404 page not found\n", r
    # malformed, oversized, HTTP/2 preface: error status and close
    with metrics_conn(mrelay) as b:
        b.send(b"GARBAGE\r\n\r\n")
        assert b.read_http_response().status == 400
        b.wait_closed(2, allow_data=True)
    with metrics_conn(mrelay) as big:
        big.send(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        assert big.read_http_response().status == 431
        big.wait_closed(2, allow_data=True)
    # HTTP/1.0 without keep-alive closes after the response
    with metrics_conn(mrelay) as old:
        old.send(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert old.read_http_response().status == 200
        old.wait_closed(2, allow_data=True)


def test_slow_head_times_out(mrelay):
    """Reference §5.1: 5 s to send a complete request head."""
    with metrics_conn(mrelay) as c:
        c.send(b"GET /metrics HTTP/1.1\r\n")
        t0 = time.monotonic()
        c.wait_closed(9, allow_data=True)
        assert 4.0 <= time.monotonic() - t0 <= 8.0


def test_connections_bounded(mrelay):
    conns = [RawConn("127.0.0.1", mrelay.metrics_port, timeout=2) for _ in range(24)]
    try:
        served = 0
        for c in conns:
            try:
                if c.request("GET", "/metrics").status == 200:
                    served += 1
            except Exception:
                pass
        assert 1 <= served <= 16  # METRICS_CONNECTIONS_MAX: the rest are closed at accept
    finally:
        for c in conns:
            c.close()
    # a fresh scrape works once the others are gone
    wait_until(lambda: metrics_conn(mrelay).request("GET", "/metrics", {"Connection": "close"}).status == 200, 5)


RECV_BUFFERS = 'pyrycode_relay_worker_recv_buffers{worker="0"}'
RECV_EXHAUSTED = 'pyrycode_relay_worker_recv_buffer_exhausted_total{worker="0"}'


def test_receive_ring_starts_small_and_grows_under_a_burst(relay_factory):
    """The provided-buffer ring starts with 64 buffers (RECV_BUFFER_COUNT_INITIAL) and
    doubles once receives found it empty in two of the last four loop iterations. 300 connections
    made and sent their requests while the relay is stopped: once it resumes, their
    receives are armed in one go and each finds data at once, several times 64 buffers'
    worth. Every request is answered."""
    # one worker: the whole burst lands on worker 0's ring, the one these series name
    mrelay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "0", "--workers", "1"], tls=False)
    s = scrape(mrelay)
    assert s[RECV_BUFFERS] == 64 and s[RECV_EXHAUSTED] == 0
    socks = []
    os.kill(mrelay.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(300):  # the kernel completes the handshakes into the listen backlog
            k = socket.create_connection(("127.0.0.1", mrelay.port), timeout=10)
            socks.append(k)
            k.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
    finally:
        os.kill(mrelay.proc.pid, signal.SIGCONT)
    try:
        for k in socks:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = k.recv(4096)
                assert chunk, "closed before answering"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200 ")
        after = scrape(mrelay)
        assert after[RECV_EXHAUSTED] > 0
        assert after[RECV_BUFFERS] in (128, 256, 512, 1024)
    finally:
        for k in socks:
            k.close()


def test_public_listener_has_no_metrics(mrelay):
    assert mrelay.http("GET", "/metrics").status == 404


def test_metrics_port_taken_is_a_listener_failure(relay_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = relay_factory.boot(["--insecure-listen", f"127.0.0.1:{free_port()}", f"--metrics-listen=127.0.0.1:{port}"])
        assert res.returncode == 1
        rec = [r for r in res.log_records if r.get("msg") == "listener failed"]
        assert rec and rec[0]["addr"] == f"127.0.0.1:{port}"


def listening_ports(pid: int) -> set:
    """TCP ports the process listens on, from its socket inodes and /proc/net/tcp{,6}."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def test_listeners_enabled_and_disabled(relay_factory):
    on = relay_factory.start(metrics=True)
    assert listening_ports(on.proc.pid) == {on.port, on.metrics_port}
    off = relay_factory.start(metrics=False)  # --metrics-listen= : no bind at all
    assert listening_ports(off.proc.pid) == {off.port}


# ---------------------------------------------------------------- terminal paths


def test_server_accept_and_gauge(mrelay, server_id):
    before = scrape(mrelay)
    b = claim(mrelay, server_id)
    settle(mrelay, before, {up("server", "accept"): 1, BINARIES: 1})
    before = scrape(mrelay)
    close_and_wait(b, 1000)
    # the binary leaves: in grace it is no longer counted; the close is a normal one
    settle(mrelay, before, {BINARIES: -1, closed("normal"): 1})


def test_reject_headers_both_endpoints(mrelay, server_id):
    before = scrape(mrelay)
    h = server_headers(server_id)
    del h["X-Pyrycode-Version"]
    assert mrelay.connect().upgrade("/v1/server", h, expect=400).status == 400
    h = client_headers(server_id)
    del h["X-Pyrycode-Token"]
    assert mrelay.connect().upgrade("/v1/client", h, expect=400).status == 400
    settle(mrelay, before, {up("server", "reject_headers"): 1, up("client", "reject_headers"): 1})


def test_library_handshake_failures_not_counted(mrelay, server_id):
    before = scrape(mrelay)
    assert mrelay.http("POST", "/v1/server", server_headers(server_id)).status == 405
    assert mrelay.http("GET", "/v1/client", client_headers(server_id)).status == 426
    assert mrelay.http("GET", "/healthz").status == 200
    time.sleep(0.2)
    assert_deltas(before, scrape(mrelay), {})


def test_phone_accept_404_and_cap(mrelay, server_id):
    before = scrape(mrelay)
    p = mrelay.ws_client(server_id)
    expect_close(p, NO_SERVER)
    settle(mrelay, before, {up("client", "reject_404"): 1, fail("no_server"): 1, closed("application"): 1})
    b = claim(mrelay, server_id)
    before = scrape(mrelay)
    phones = [register(mrelay, server_id)[0] for _ in range(16)]
    settle(mrelay, before, {up("client", "accept"): 16, PHONES: 16})
    before = scrape(mrelay)
    extra = mrelay.ws_client(server_id)
    expect_close(extra, AT_CAP)
    settle(mrelay, before, {up("client", "reject_429"): 1, fail("phones_at_cap"): 1, closed("application"): 1})
    # one phone drops without a close frame: abnormal; the others close normally
    before = scrape(mrelay)
    abort(phones[0])
    for p in phones[1:4]:
        close_and_wait(p, 1000)
    settle(mrelay, before, {PHONES: -4, closed("abnormal"): 1, closed("normal"): 3})


def test_conflict_409_and_takeover(relay_factory, server_id):
    relay = relay_factory.start(metrics=True, args=["--conflict-probe-timeout", "1s", "--rate-limit-burst", "0"])
    inc = claim(relay, server_id)
    before = scrape(relay)
    out = {}

    def second():
        c = relay.connect(timeout=8)
        c.upgrade("/v1/server", server_headers(server_id))
        out["close"] = c.read_close(8)
        c.send_quietly(build_frame(OP_CLOSE, close_payload(4409)))
        c.wait_closed(6, allow_data=True)
        c.close()  # as a real client does once the relay closed TCP: the relay's slot ends at our EOF

    t = threading.Thread(target=second)
    t.start()
    f = inc.read_frame(timeout=5)
    assert f.opcode == OP_PING
    inc.send_frame(OP_PONG, f.payload)
    t.join(10)
    assert out.get("close") == CONFLICT
    settle(relay, before, {up("server", "reject_409"): 1, fail("server_in_use"): 1, closed("application"): 1})
    # a dead incumbent (never answers the probe) is taken over: that counts as accept
    before = scrape(relay)
    newb = relay.ws("/v1/server", server_headers(server_id), timeout=8)
    relay.wait_log("server_id_takeover", server_id=server_id, timeout=5)
    # the old binary is closed 1011 heartbeat timeout (internal_error) once it goes
    expect_close(inc, (1011, b"heartbeat timeout"))
    settle(relay, before, {up("server", "accept"): 1, closed("internal_error"): 1})
    barrier(newb)


def test_rate_limit_both_endpoints(relay_factory, server_id):
    relay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "1", "--rate-limit-refill", "1h"])
    before = scrape(relay)
    b = claim(relay, server_id)
    assert relay.connect().upgrade("/v1/server", server_headers(server_id + "x"), expect=429).status == 429
    assert relay.connect().upgrade("/v1/client", client_headers(server_id), expect=429).status == 429
    settle(relay, before, {up("server", "accept"): 1, BINARIES: 1, up("server", "reject_rate_limit"): 1,
                           up("client", "reject_rate_limit"): 1, fail("ratelimit"): 2})
    barrier(b)


def test_connection_cap_503_not_counted(relay_factory, server_id):
    relay = relay_factory.start(metrics=True, args=["--max-connections", "1", "--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    before = scrape(relay)
    r = relay.connect().upgrade("/v1/client", client_headers(server_id), expect=503)
    assert r.status == 503
    time.sleep(0.2)
    assert_deltas(before, scrape(relay), {})
    barrier(b)


def test_frames_forwarded_and_drops(mrelay, server_id):
    b = claim(mrelay, server_id)
    p, cid = register(mrelay, server_id)
    before = scrape(mrelay)
    for i in range(5):
        p.send_json({"n": i})
    for i in range(5):
        assert read_wrapped(b)[0] == cid
    for i in range(3):
        route(b, cid, b'{"r":%d}' % i)
    for i in range(3):
        assert read_text(p) == b'{"r":%d}' % i
    # dropped: unknown conn_id, malformed, push wake (push off); none counted forwarded
    route(b, cid + "0", b"1")
    b.send_text(b"not json")
    b.send_text(b'{"push_wake":{"platform":"fcm","token":"t"}}')
    barrier(b)
    after = settle(mrelay, before, {fwd("phone_to_binary"): 5, fwd("binary_to_phone"): 3,
                                    drop("unknown_conn_id"): 1, drop("malformed_envelope"): 1,
                                    drop("push_wake_refused"): 1})
    # the latency histogram saw the 5 phone frames, all in the finite buckets
    h = "pyrycode_relay_phone_to_binary_latency_seconds"
    assert after[f'{h}_count'] - before[f'{h}_count'] == 5
    assert after[f'{h}_bucket{{le="1"}}'] - before[f'{h}_bucket{{le="1"}}'] == 5
    assert after[f'{h}_sum'] > before[f'{h}_sum']
    assert after["pyrycode_relay_bytes_received_total"] > before["pyrycode_relay_bytes_received_total"]
    assert after["pyrycode_relay_bytes_sent_total"] > before["pyrycode_relay_bytes_sent_total"]
    # every payload byte went through the one unmask pass; all of it JSON, so ASCII, so
    # none through the UTF-8 validator as well (ADR 19)
    one, utf8 = ('pyrycode_relay_payload_bytes_total{pass="%s"}' % p for p in ("unmask_ascii", "utf8"))
    assert after[one] - before[one] >= 5 * len(b'{"r":0}')
    assert after[utf8] == before[utf8]
    # a close directive carrying a frame: the frame counts, the phone closes 4401
    before = after
    directive(b, cid, 4401, b'"bye"')
    assert read_text(p) == b'"bye"'
    expect_close(p, (4401, b""))
    settle(mrelay, before, {fwd("binary_to_phone"): 1, PHONES: -1, closed("application"): 1})
    # a phone sending invalid JSON is dropped (1000) and its frame is not forwarded
    p2, cid2 = register(mrelay, server_id)
    before = scrape(mrelay)
    p2.send_text(b"{nope")
    expect_close(p2, (1000, b""))
    settle(mrelay, before, {drop("phone_invalid_json"): 1, PHONES: -1, closed("normal"): 1})


def test_grace_expiry_and_stale_timer(relay_factory, server_id):
    relay = relay_factory.start(metrics=True, args=["--grace-period", "1s", "--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    before = scrape(relay)
    close_and_wait(b, 1000)
    # in grace: no longer counted as connected, no expiry yet; a phone frame now is dropped
    p.send_json({"late": 1})
    expect_close(p, (1000, b""))
    settle(relay, before, {BINARIES: -1, PHONES: -1, closed("normal"): 2, drop("no_binary"): 1})
    before = scrape(relay)
    time.sleep(1.6)
    settle(relay, before, {GRACE: 1})
    # reclaim within grace: the old timer is stale and never counts
    b2 = claim(relay, server_id)
    before = scrape(relay)
    close_and_wait(b2, 1000)
    b3 = claim(relay, server_id)
    time.sleep(1.6)
    settle(relay, before, {BINARIES: 0, up("server", "accept"): 1, closed("normal"): 1})
    barrier(b3)


def test_protocol_violation_counts_protocol_error(relay_factory, server_id):
    relay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    before = scrape(relay)
    # a protocol violation (unmasked frame) from a phone: protocol_error
    p = relay.ws_client(server_id)
    p.send(build_frame(OP_PING, b"x", mask=False))
    code, _ = p.read_close(5)
    assert code == 1002
    p.close()
    settle(relay, before, {up("client", "accept"): 1, closed("protocol_error"): 1})


def test_body_never_carries_request_data(relay_factory):
    relay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "0"])
    sid = "secret-server-id-7f3a"
    token = "super-secret-token-91c2"
    b = claim(relay, sid)
    p, cid = register(relay, sid, **{"X-Pyrycode-Token": token, "X-Pyrycode-Device-Name": "Alice's phone"})
    p.send_json({"payload": "private-payload-5d"})
    read_wrapped(b)
    body = relay.metrics_text()
    for secret in (sid, token, cid, "private-payload-5d", "Alice", "127.0.0.1", "e2e-1.0", "pyrycode-e2e"):
        assert secret not in body, secret


# ---------------------------------------------------------------- Prometheus tools


def test_promtool_check_metrics(relay_factory, server_id):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: tools/deps.sh test installs Debian's prometheus package"
    relay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    p, _ = register(relay, server_id)
    p.send_json({"x": 1})
    read_wrapped(b)
    text = relay.metrics_text()
    res = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def _prom_query(port: int, q: str):
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.request.quote(q)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        data = json.loads(r.read())
    assert data["status"] == "success", data
    return data["data"]["result"]


def test_real_prometheus_scrapes_relay(relay_factory, server_id, tmp_path):
    prom = shutil.which("prometheus")
    assert prom, "prometheus missing: tools/deps.sh test installs Debian's prometheus package"
    relay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    phones = [register(relay, server_id)[0] for _ in range(3)]
    deploy = REPO_ROOT / "deploy" / "prometheus"
    shutil.copy(deploy / "pyrycode-relay-rules.yml", tmp_path / "pyrycode-relay-rules.yml")
    cfg = (deploy / "prometheus.yml").read_text()
    assert "127.0.0.1:9090" in cfg
    cfg = cfg.replace("127.0.0.1:9090", f"127.0.0.1:{relay.metrics_port}")
    cfg = re.sub(r"scrape_interval: \S+", "scrape_interval: 1s", cfg)
    cfg = re.sub(r"scrape_timeout: \S+", "scrape_timeout: 1s", cfg)
    (tmp_path / "prometheus.yml").write_text(cfg)
    check = subprocess.run([shutil.which("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prom, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def phones_seen():
            try:
                res = _prom_query(port, "pyrycode_relay_connected_phones")
            except Exception:
                return False
            return bool(res) and float(res[0]["value"][1]) == 3
        wait_until(phones_seen, 40, interval=0.5, what="Prometheus to scrape connected_phones == 3")
        up_res = _prom_query(port, 'up{job="pyrycode-relay"}')
        # the rules loaded and evaluate against the relay's series
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as r:
            groups = json.loads(r.read())["data"]["groups"]
        assert groups and groups[0]["name"] == "pyrycode-relay"
        assert all(rule.get("health") != "err" for rule in groups[0]["rules"]), groups
        assert up_res and float(up_res[0]["value"][1]) == 1
        # and it follows the live count
        close_and_wait(phones[0], 1000)
        wait_until(lambda: float(_prom_query(port, "pyrycode_relay_connected_phones")[0]["value"][1]) == 2, 20,
                   interval=0.5, what="Prometheus to see connected_phones == 2")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# ---------------------------------------------------------------- zero-copy sends


ZC_SENDS, ZC_COPIED = "pyrycode_relay_zerocopy_sends_total", "pyrycode_relay_zerocopy_copied_total"


def test_zero_copy_sends_counted_and_intact(relay_factory, server_id):
    """--zerocopy-min-bytes: large sends go out as send_zc; on loopback the kernel copies
    (the fallback is counted), and every byte still arrives in order."""
    # zero-copy is for plaintext sockets only (a TLS socket's records are ours or the kernel's)
    relay = relay_factory.start(metrics=True, args=["--zerocopy-min-bytes", "4096", "--rate-limit-burst", "0"],
                                tls=False)
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    before = scrape(relay)
    frames = [b'"' + bytes([0x61 + i % 26]) * (20000 + i * 1000) + b'"' for i in range(8)]
    for f in frames:
        route(b, cid, f)
    for f in frames:
        assert read_text(p, timeout=10) == f
    route(b, cid, b"1")  # small: a plain send
    assert read_text(p) == b"1"
    after = settle(relay, before, {fwd("binary_to_phone"): 9})
    zc = after[ZC_SENDS] - before[ZC_SENDS]
    assert 1 <= zc <= 8, zc
    assert after[ZC_COPIED] - before[ZC_COPIED] == zc  # loopback always copies


def test_zero_copy_off_by_default(mrelay, server_id):
    b = claim(mrelay, server_id)
    p, cid = register(mrelay, server_id)
    route(b, cid, b'"' + b"z" * 50000 + b'"')
    assert len(read_text(p, timeout=10)) == 50002
    s = scrape(mrelay)
    assert s[ZC_SENDS] == 0 and s[ZC_COPIED] == 0


COPY_IN_SCAN, COPY_SEPARATE = ('pyrycode_relay_payload_copy_bytes_total{copy="%s"}' % c
                               for c in ("in_scan", "separate"))


def copies_moved(relay, before: dict, in_scan: int, separate: int):
    """pyrycode_relay_payload_copy_bytes_total moved by exactly these bytes (not in
    WATCHED: every forwarded frame moves it)."""
    want = {COPY_IN_SCAN: in_scan, COPY_SEPARATE: separate}
    got = {}

    def ok():
        s = scrape(relay)
        got.update({k: s[k] - before[k] for k in want})
        return got == want
    try:
        wait_until(ok, 5, interval=0.05, what="the copy counters to move")
    except TimeoutError:
        pass
    assert got == want


def _cpu_has_avx2() -> bool:
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and " avx2" in line for line in f)


@pytest.mark.parametrize("isa", ["word", "sse2", "avx2", "auto"])
def test_payload_isa_each_level_relays_intact(relay_factory, server_id, isa):
    """--payload-isa (ADR 19): every level of the payload passes (unmask + ASCII test,
    JSON string scan) relays long, escaped and non-ASCII JSON byte for byte both ways,
    refuses a control byte deep inside a long string, and says in /metrics which ran."""
    if isa == "avx2" and not _cpu_has_avx2():
        pytest.skip("this CPU has no AVX2 (the relay refuses the flag; the unit test checks that)")
    relay = relay_factory.start(metrics=True, args=["--payload-isa", isa, "--rate-limit-burst", "0"])
    want = isa if isa != "auto" else ("avx2" if _cpu_has_avx2() else "sse2")
    s = scrape(relay)
    assert s[f'pyrycode_relay_payload_pass_info{{isa="{want}"}}'] == 1
    assert sum(v for k, v in s.items() if k.startswith("pyrycode_relay_payload_pass_info{")) == 1
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    # lengths around every step (8, 16, 32, 64 bytes), escapes and non-ASCII at odd places
    texts = []
    for n in (0, 7, 15, 31, 33, 63, 64, 65, 100, 127, 129, 1000, 4093, 20000):
        body = "".join(chr(0x61 + (i * 7) % 26) for i in range(n))
        texts.append(json.dumps({"d": body}).encode())
        texts.append(json.dumps({"d": body[: n // 2] + '\\"é€😀' + body[n // 2:]}, ensure_ascii=False).encode())
    total = sum(len(t) for t in texts)
    before = scrape(relay)
    for t in texts:
        p.send_text(t)
    for t in texts:
        got_cid, frame = read_wrapped(b)
        assert got_cid == cid and frame == t
    # every phone frame was copied into the binary's outbox by its JSON check (issue #17)
    copies_moved(relay, before, in_scan=total, separate=0)
    before = scrape(relay)
    for t in texts:
        route(b, cid, t)
    for t in texts:
        assert read_text(p, timeout=10) == t
    # in the form binaries send, a binary's frames too: the phone is named before the frame
    copies_moved(relay, before, in_scan=total, separate=0)
    before = scrape(relay)
    for t in texts:
        b.send_frame(OP_TEXT, b'{"conn_id": ' + json.dumps(cid).encode() + b', "frame": ' + t + b"}")
    for t in texts:
        assert read_text(p, timeout=10) == t
    # in any other form, copied once the envelope scan has named the phone
    copies_moved(relay, before, in_scan=0, separate=total)
    # a control byte 70 bytes into a long string: past the vector steps, still refused
    before = scrape(relay)
    bad = b'{"d":"' + b"x" * 70 + b"\x01" + b"y" * 100 + b'"}'
    route(b, cid, bad)
    barrier(b)
    settle(relay, before, {drop("malformed_envelope"): 1})
    p.send_text(bad)
    expect_close(p, (1000, b""))
