"""Lifecycle end to end: heartbeat (reference §5.2), graceful shutdown with live registry
state (§2.4, §4.5, §7.6), boot refusals and informational flags (§7.1, §7.3, §7.4)."""

import re
import signal
import threading
import time

import pytest

from relayctl import (HEARTBEAT, OP_CLOSE, OP_PING, SHUTDOWN, ConnClosed, answer_pings_for, build_frame, claim,
                      client_headers, close_and_wait, close_payload, drain_to_close, free_port, read_text,
                      read_wrapped, register, route, run_wsclient, server_headers, wrapped)

FAST_HEARTBEAT = ["--heartbeat-interval", "1s", "--heartbeat-timeout", "1s"]

# --------------------------------------------------------------------------------------
# heartbeat


def test_heartbeat_clients_answering_pings_stay_connected(relay_factory, server_id):
    relay = relay_factory.start(args=FAST_HEARTBEAT)
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    results = {}

    def keep(name, conn):
        results[name] = answer_pings_for(conn, 4.5)

    threads = [threading.Thread(target=keep, args=(n, c), daemon=True) for n, c in (("binary", b), ("phone", p))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(8)
    assert results.get("binary", 0) >= 3 and results.get("phone", 0) >= 3, \
        f"expected a ping about every second on both ends, got {results}"
    # both still fully working
    p.send_json({"alive": 1})
    assert read_wrapped(b) == (cid, b'{"alive":1}')
    route(b, cid, b'"yes"')
    assert read_text(p) == b'"yes"'
    assert relay.healthz()["connected_phones"] == 1


def test_heartbeat_node_ws_client_stays_connected(relay_factory, server_id):
    """npm ws answers pings by itself."""
    relay = relay_factory.start(args=FAST_HEARTBEAT)
    res = run_wsclient(relay.ws_url("/v1/server"), server_headers(server_id), [
        {"op": "expect_open", "ms": 4000},
        {"op": "ping", "data": "still-here"},
        {"op": "close", "code": 1000},
        {"op": "expect_close", "code": 1000},
    ], timeout=12)
    assert res["ok"], res


def test_heartbeat_python_websockets_peers_stay_while_silent_ones_drop(relay_factory, server_id, pyws):
    """Python websockets answers pings by itself: a binary and a phone on it outlive a
    binary and a phone that never read (dropped with 1011 or a TCP close) on the same
    relay, and still exchange frames afterwards."""
    relay = relay_factory.start(args=FAST_HEARTBEAT)
    live_binary = pyws(relay, "/v1/server", server_headers(server_id))
    relay.wait_log("server_claimed", server_id=server_id)
    live_phone = pyws(relay, "/v1/client", client_headers(server_id))
    relay.wait_log("phone_registered", server_id=server_id)
    dead_phone, dead_cid = register(relay, server_id)  # never reads, never answers pings
    dead_binary = claim(relay, server_id + "-dead")    # same, on the binary endpoint
    t0 = time.monotonic()

    time.sleep(2.5)
    for name, conn in (("phone", dead_phone), ("binary", dead_binary)):
        left = max(0.5, 5.0 - (time.monotonic() - t0))
        how, code, reason, _ = drain_to_close(conn, left)
        if how == "close":
            assert (code, reason) == HEARTBEAT, f"silent {name}: close {code} {reason!r}"
        # else: TCP closed within ~5 s, also acceptable

    remaining = 4.5 - (time.monotonic() - t0)
    if remaining > 0:
        time.sleep(remaining)
    assert live_binary.is_open(), f"live binary closed: {live_binary.close_code} {live_binary.close_reason!r}"
    assert live_phone.is_open(), f"live phone closed: {live_phone.close_code} {live_phone.close_reason!r}"
    live_phone.send('{"still":"here"}')
    env = live_binary.recv_json(3)
    while "frame" not in env:  # the silent phone's close notice may come first
        assert env == {"conn_id": dead_cid, "close_code": env.get("close_code")}, env
        env = live_binary.recv_json(3)
    assert env["frame"] == {"still": "here"}, env
    live_binary.send(wrapped(env["conn_id"], b'{"back":1}').decode())
    assert live_phone.recv(3) == '{"back":1}'
    h = relay.healthz()
    assert h["connected_binaries"] == 1 and h["connected_phones"] == 1, h


@pytest.mark.parametrize("endpoint", ["binary", "phone"])
def test_heartbeat_silent_peer_closed_1011(relay_factory, server_id, endpoint):
    relay = relay_factory.start(args=FAST_HEARTBEAT)
    b = claim(relay, server_id)
    t0 = time.monotonic()
    if endpoint == "binary":
        conn = b
    else:
        conn, cid = register(relay, server_id)
    # read (so we see what arrives) but never answer a ping
    pings = 0
    while True:
        f = conn.read_frame(timeout=5)
        if f.opcode == OP_PING:
            pings += 1
            continue
        break
    took = time.monotonic() - t0
    assert f.opcode == OP_CLOSE, f"expected a close after unanswered pings, got {f!r}"
    assert (f.close_code, f.close_reason) == HEARTBEAT
    assert pings >= 1
    assert 1.5 <= took <= 3.5, f"heartbeat close after {took:.2f}s with interval 1s + timeout 1s"
    conn.send_quietly(build_frame(OP_CLOSE, close_payload(1011)))
    conn.wait_closed(6, allow_data=True)
    conn.close()
    if endpoint == "phone":
        relay.wait_log("phone_unregistered", conn_id=cid)
    else:
        relay.wait_log("server_released", server_id=server_id)


def test_heartbeat_dead_peer_that_never_reads_is_dropped(relay_factory, server_id):
    relay = relay_factory.start(args=FAST_HEARTBEAT + ["--grace-period", "0s"])
    b = claim(relay, server_id)  # never read from again
    t0 = time.monotonic()
    relay.wait_log("server_released", timeout=10, server_id=server_id)
    assert time.monotonic() - t0 <= 9, "a dead binary must be released (heartbeat + bounded close handshake)"
    assert relay.healthz()["connected_binaries"] == 0
    try:
        code = b.read_close(timeout=2)
        assert code == HEARTBEAT, code
    except ConnClosed:
        pass


# --------------------------------------------------------------------------------------
# shutdown


def test_sigterm_closes_every_websocket_1001_and_exits_0(relay_factory, server_id, pyws):
    relay = relay_factory.start(args=["--grace-period", "10s"])
    b = claim(relay, server_id)
    phones = [register(relay, server_id)[0] for _ in range(2)]
    # a server-id whose binary is in its grace window: its phone is closed too
    gone = server_id + "-g"
    bg = claim(relay, gone)
    pg, _ = register(relay, gone)
    close_and_wait(bg)
    relay.wait_log("server_released", server_id=gone)
    # a binary and a phone on Python websockets, which answers the close by itself
    py_id = server_id + "-py"
    py_binary = pyws(relay, "/v1/server", server_headers(py_id))
    relay.wait_log("server_claimed", server_id=py_id)
    py_phone = pyws(relay, "/v1/client", client_headers(py_id))
    relay.wait_log("phone_registered", server_id=py_id)

    mark = relay.log_mark()
    t0 = time.monotonic()
    relay.signal(signal.SIGTERM)
    for conn in [b, *phones, pg]:
        got = conn.read_close(timeout=5)
        assert got == SHUTDOWN, f"shutdown close {got!r}, expected {SHUTDOWN!r}"
        conn.send_quietly(build_frame(OP_CLOSE, close_payload(1001)))
    for conn in [b, *phones, pg]:
        conn.wait_closed(6, allow_data=True)
        conn.close()
    for name, c in (("python binary", py_binary), ("python phone", py_phone)):
        code, reason = c.wait_closed(6)
        assert (code, reason) == (SHUTDOWN[0], SHUTDOWN[1].decode()), f"{name}: close {code} {reason!r}"
    rc = relay.wait_exit(12)
    took = time.monotonic() - t0
    assert rc == 0, f"exit code {rc}; log:\n{relay.log_tail()}"
    assert took < 11, f"shutdown took {took:.1f}s (drain deadline 10 s)"
    relay.wait_log("shutdown complete", since=mark, timeout=2)
    assert not relay.find_logs("drain incomplete", since=mark)
    # the listener is gone with the process
    try:
        c = relay.connect(timeout=1)
    except OSError:
        pass
    else:
        # the port is in the ephemeral range: a connect to it with nobody listening can
        # pick the same port as its source and connect to itself (TCP simultaneous open)
        self_connected = c.sock.getsockname() == c.sock.getpeername()
        c.close()
        assert self_connected, "relay still accepts TCP connections after exiting"


def test_sigterm_with_real_client_libraries(relay_factory, server_id):
    relay = relay_factory.start()
    res = {}

    def node_phone():
        res["phone"] = run_wsclient(relay.ws_url("/v1/client"), client_headers(server_id), [
            {"op": "send", "text": '{"ready":1}'},
            {"op": "expect_close", "code": 1001, "timeout_ms": 8000},
        ], timeout=12)

    b = claim(relay, server_id)
    t = threading.Thread(target=node_phone, daemon=True)
    t.start()
    read_wrapped(b, timeout=8)
    relay.signal(signal.SIGTERM)
    assert b.read_close() == SHUTDOWN
    b.send_quietly(build_frame(OP_CLOSE, close_payload(1001)))
    b.wait_closed(6, allow_data=True)
    b.close()
    t.join(12)
    assert res["phone"]["ok"], res["phone"]
    assert res["phone"]["close"]["reason"] == "shutting down"
    assert relay.wait_exit(12) == 0


# --------------------------------------------------------------------------------------
# boot


def _listen():
    return ["--insecure-listen", f"127.0.0.1:{free_port()}", "--metrics-listen="]


BOOT_REFUSALS = [
    pytest.param(lambda: _listen() + ["--max-connections", "0"], {}, id="max-connections-0"),
    pytest.param(_listen, {"PYRYCODE_RELAY_PRODUCTION": "true"}, id="production-true"),
    pytest.param(_listen, {"PYRYCODE_RELAY_PRODUCTION": ""}, id="production-empty"),
    pytest.param(_listen, {"PYRYCODE_RELAY_PRODUCTION": "1"}, id="production-insecure"),
    pytest.param(_listen, {"PYRYCODE_RELAY_SINGLE_INSTANCE": "yes"}, id="single-instance-malformed"),
    pytest.param(_listen, {"FLY_APP_NAME": "x"}, id="fly-without-single-instance"),
    pytest.param(lambda: ["--insecure-listen", f"127.0.0.1:{free_port()}", "--metrics-listen", "localhost:9090"],
                 {}, id="metrics-hostname"),
    pytest.param(lambda: ["--insecure-listen", f"127.0.0.1:{free_port()}", "--metrics-listen", "0.0.0.0:9090"],
                 {}, id="metrics-not-loopback"),
    pytest.param(lambda: _listen() + ["--http-listen", ":80"], {}, id="insecure-with-http-listen"),
    pytest.param(lambda: _listen() + ["--https-listen", ":443"], {}, id="insecure-with-https-listen"),
    pytest.param(lambda: _listen() + ["--https-proxy-protocol"], {}, id="insecure-with-proxy-protocol"),
    pytest.param(lambda: _listen() + ["--payload-isa", "avx512"], {}, id="payload-isa-unknown"),
]


@pytest.mark.parametrize("args,env", BOOT_REFUSALS)
def test_boot_refusal_exits_2_with_fix(relay_factory, args, env):
    res = relay_factory.boot(args(), env=env)
    assert res.returncode == 2, res
    refusals = [r for r in res.log_records if r.get("msg", "").startswith("refusing to start: ")]
    assert refusals, f"no 'refusing to start: ...' line:\n{res.stderr}"
    assert "fix" in refusals[0] and refusals[0]["fix"], f"refusal without a fix key: {refusals[0]['_raw']}"


def test_negative_max_connections_exits_2(relay_factory):
    # Go's flag package parses -1 as an int and the <= 0 check refuses it (with a
    # "refusing to start" line); a parse-time usage error is also exit 2.
    res = relay_factory.boot(_listen() + ["--max-connections", "-1"])
    assert res.returncode == 2, res


def test_fly_with_single_instance_boots(relay_factory):
    relay = relay_factory.start(env={"FLY_APP_NAME": "x", "PYRYCODE_RELAY_SINGLE_INSTANCE": "1"})
    assert relay.healthz()["status"] == "ok"


def test_version_prints_and_exits_0(relay_factory):
    res = relay_factory.boot(["--version"])
    assert res.returncode == 0, res
    assert res.stdout.strip() or res.stderr.strip(), "--version printed nothing"


ALL_FLAGS = ["domain", "cert-cache", "insecure-listen", "https-listen", "http-listen", "metrics-listen",
             "trust-x-forwarded-for", "https-proxy-protocol", "max-connections", "version",
             "rate-limit-burst", "rate-limit-refill", "grace-period", "heartbeat-interval",
             "heartbeat-timeout", "conflict-probe-timeout", "workers", "zerocopy-min-bytes", "check"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_and_lists_every_flag(relay_factory, flag):
    res = relay_factory.boot([flag])
    assert res.returncode == 0, res
    text = res.stdout + res.stderr
    missing = [f for f in ALL_FLAGS if not re.search(r"(^|\s)--?" + re.escape(f) + r"\b", text)]
    assert not missing, f"--help does not list {missing}:\n{text}"
