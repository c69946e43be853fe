"""Liveness and resource limits: the heartbeat, per-phone back-pressure, the per-IP
upgrade rate limiter and the global connection cap (reference §1.7, §4.7, §5.2, §5.7,
§6.1, §9)."""

import time

from relayctl import OP_TEXT, build_frame, client_headers, server_headers
from relayhelp import claim, drain_to_close, hello, pyws, read_text, register, routed  # noqa: F401


# --- heartbeat

def test_heartbeat_keeps_live_peers_and_drops_silent_ones(relay_factory, server_id, pyws):
    relay = relay_factory.start(args=["--heartbeat-interval", "1s", "--heartbeat-timeout", "1s"])
    live_binary = pyws(relay, "/v1/server", server_headers(server_id))
    relay.wait_log("server_claimed", server_id=server_id)
    live_phone = pyws(relay, "/v1/client", client_headers(server_id))
    relay.wait_log("phone_registered", server_id=server_id)
    dead_phone = register(relay, server_id)           # never reads, never answers pings
    dead_binary = claim(relay, server_id + "-dead")   # same, on the binary endpoint
    t0 = time.monotonic()

    time.sleep(2.5)
    for name, conn in (("phone", dead_phone), ("binary", dead_binary)):
        left = max(0.5, 5.0 - (time.monotonic() - t0))
        how, code, reason, _ = drain_to_close(conn, left)
        if how == "close":
            assert (code, reason) == (1011, b"heartbeat timeout"), f"silent {name}: close {code} {reason!r}"
        # else: TCP closed within ~5 s, also acceptable

    remaining = 4.5 - (time.monotonic() - t0)
    if remaining > 0:
        time.sleep(remaining)
    assert live_binary.is_open(), f"live binary closed: {live_binary.close_code} {live_binary.close_reason!r}"
    assert live_phone.is_open(), f"live phone closed: {live_phone.close_code} {live_phone.close_reason!r}"
    live_phone.send('{"still":"here"}')
    env = live_binary.recv_json(3)
    while "frame" not in env:  # close notices for the silent phone may come first
        env = live_binary.recv_json(3)
    assert env["frame"] == {"still": "here"}, env
    live_binary.send(routed(env["conn_id"], '{"back":1}').decode())
    assert live_phone.recv(3) == '{"back":1}'
    h = relay.healthz()
    assert h["connected_binaries"] == 1 and h["connected_phones"] == 1, h


def test_raw_peer_answering_pings_stays(relay_factory, server_id):
    relay = relay_factory.start(args=["--heartbeat-interval", "1s", "--heartbeat-timeout", "1s"])
    binary = claim(relay, server_id)
    deadline = time.monotonic() + 3.5
    pings = 0
    while time.monotonic() < deadline:
        try:
            f = binary.read_frame(timeout=max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        assert f.opcode == 0x9, f"expected only pings, got {f!r}"
        binary.send_frame(0xA, f.payload)
        pings += 1
    assert pings >= 2, f"{pings} heartbeat pings in 3.5 s with a 1 s interval"
    binary.ping(b"alive")


# --- back-pressure

def test_many_small_frames_arrive_complete_in_order(relay, server_id):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    pad = "x" * 1000
    frames = [f'{{"seq":{i},"pad":"{pad}"}}' for i in range(300)]
    binary.send(b"".join(build_frame(OP_TEXT, routed(cid, f)) for f in frames), timeout=10)
    for i, f in enumerate(frames):
        got = read_text(phone, timeout=5)
        assert got == f.encode(), f"frame {i}: got {got[:60]!r}..., expected {f[:60]!r}..."
    assert phone.is_open(0.1)


PHONE_OUTBOX_BUDGET = 4 * 1024 * 1024  # §5.7
FRAME_BYTES = 200 * 1024


def _sysctl_ints(name, default):
    try:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return default


def stalled_phone_frames() -> int:
    """How many 200 KiB frames must go to a phone that never reads before a relay that
    keeps the §5.7 budget (4 MiB, not counting bytes the kernel already took) must
    overflow: the loopback socket buffers (relay's send buffer, at most tcp_wmem max,
    plus the phone's untouched receive buffer, tcp_rmem default) can take ~4.1 MiB on
    their own, so the spec's 40 frames (7.8 MiB) sit right at the edge. At least 40."""
    wmem_max = _sysctl_ints("tcp_wmem", [4096, 16384, 4194304])[2]
    rmem_default = _sysctl_ints("tcp_rmem", [4096, 131072, 6291456])[1]
    absorbable = wmem_max + rmem_default + PHONE_OUTBOX_BUDGET
    return max(40, -(-absorbable // FRAME_BYTES) + 1)


def test_stalled_phone_closed_sibling_unaffected(relay, server_id):
    frames = stalled_phone_frames()
    binary = claim(relay, server_id)
    stalled, cid_s = hello(relay, binary, server_id, "stalled")
    sibling, cid_o = hello(relay, binary, server_id, "sibling")
    mark = relay.log_mark()
    blob = "y" * FRAME_BYTES
    data = b"".join(build_frame(OP_TEXT, routed(cid_s, f'{{"n":{i},"b":"{blob}"}}')) for i in range(frames))
    sender = binary.send_in_background(data, timeout=15)
    sender.join(16)
    assert not sender.is_alive(), f"relay did not take the binary's {frames} frames (it must never block the binary)"

    # The phone has not read a byte: the relay must give up on it (its queue overflows;
    # §5.7). Only then does the phone read what the kernel buffered, up to the close
    # (reading earlier would make room and defeat the point).
    try:
        rec = relay.wait_log("binary_forwarder_phone_enqueue_failed", since=mark, timeout=6, conn_id=cid_s)
    except AssertionError:
        raise AssertionError(f"{frames} x 200 KiB ({frames * FRAME_BYTES / 2**20:.1f} MiB) routed to a phone "
                             f"that never reads: no binary_forwarder_phone_enqueue_failed within 6 s") from None
    assert rec.get("err") == "phone delivery backlog full", rec
    how, code, reason, n = drain_to_close(stalled, 12)
    if how == "close":
        assert (code, reason) == (1011, b"phone backlog full"), f"stalled phone: close {code} {reason!r} after {n} frames"
    assert n < frames, f"stalled phone received all {n} frames, then {how} {code} {reason!r}"

    # the sibling still gets frames, and the binary is still connected
    binary.send_text(routed(cid_o, '{"after":"overflow"}'))
    assert read_text(sibling, timeout=5) == b'{"after":"overflow"}'
    assert relay.healthz()["connected_binaries"] == 1


# --- per-IP upgrade rate limit

def _upgrade_status(relay, path, headers):
    c = relay.connect()
    r = c.upgrade(path, headers, expect=None)
    return c, r


def _assert_empty_error(r, status):
    assert r.status == status, r
    assert r.body == b"\n", r
    assert r.header("Content-Type") == "text/plain; charset=utf-8", r
    assert r.header("X-Content-Type-Options") == "nosniff", r
    assert not r.has_header("Retry-After"), r


def test_rate_limit_burst_20_then_429(relay, server_id):
    conns = []
    for i in range(20):
        sid = f"{server_id}-{i}"
        c, r = _upgrade_status(relay, "/v1/server" if i % 2 == 0 else "/v1/client",
                               server_headers(sid) if i % 2 == 0 else client_headers(f"{server_id}-{i - 1}"))
        assert r.status == 101, f"attempt {i + 1}: {r!r}"
        conns.append(c)
    mark = relay.log_mark()
    c, r = _upgrade_status(relay, "/v1/server", server_headers(server_id + "-21"))
    _assert_empty_error(r, 429)
    rec = relay.wait_log("rate_limited", since=mark)
    assert rec.get("level") == "WARN", rec
    assert rec.get("remote") == '"127.0.0.1"', rec
    assert not relay.find_logs("server_claimed", since=mark, server_id=server_id + "-21")
    # both endpoints share the bucket
    c, r = _upgrade_status(relay, "/v1/client", client_headers(server_id + "-0"))
    _assert_empty_error(r, 429)
    # rate limit comes before the header gate (§1.7): a request missing headers gets 429, not 400
    c, r = _upgrade_status(relay, "/v1/server", {"X-Pyrycode-Server": None})
    _assert_empty_error(r, 429)
    c, r = _upgrade_status(relay, "/v1/client", {})
    _assert_empty_error(r, 429)
    # /healthz is not rate limited
    for _ in range(5):
        assert relay.healthz()["status"] == "ok"
    # the admitted connections are unaffected
    assert conns[0].is_open(0.05)


def test_rate_limit_checked_before_header_gate(relay, server_id):
    for i in range(20):
        r = relay.http("GET", "/v1/server", {"X-Pyrycode-Server": f"{server_id}-{i}"})  # missing headers
        assert r.status == 400, f"attempt {i + 1}: {r!r}"
    c, r = _upgrade_status(relay, "/v1/client", {})
    _assert_empty_error(r, 429)
    c, r = _upgrade_status(relay, "/v1/server", server_headers(server_id))
    _assert_empty_error(r, 429)


def test_rate_limit_refill(relay_factory, server_id):
    relay = relay_factory.start(args=["--rate-limit-burst", "2", "--rate-limit-refill", "1s"])
    for i in range(2):
        c, r = _upgrade_status(relay, "/v1/server", server_headers(f"{server_id}-{i}"))
        assert r.status == 101, r
    c, r = _upgrade_status(relay, "/v1/server", server_headers(f"{server_id}-x"))
    _assert_empty_error(r, 429)
    time.sleep(1.2)
    c, r = _upgrade_status(relay, "/v1/server", server_headers(f"{server_id}-y"))
    assert r.status == 101, f"after one refill period: {r!r}"
    c, r = _upgrade_status(relay, "/v1/server", server_headers(f"{server_id}-z"))
    _assert_empty_error(r, 429)


def test_rate_limit_off(relay_factory, server_id):
    relay = relay_factory.start(args=["--rate-limit-burst", "0", "--max-connections", "100"])
    for i in range(30):
        r = relay.http("GET", "/v1/server", {"X-Pyrycode-Server": f"{server_id}-{i}"})
        assert r.status == 400, f"attempt {i + 1}: {r!r}"
    assert not relay.find_logs("rate_limited")


# --- global connection cap

def test_connection_cap_503_then_frees(relay_factory, server_id):
    relay = relay_factory.start(args=["--max-connections", "2"])
    b1 = claim(relay, server_id)
    p1 = register(relay, server_id)
    mark = relay.log_mark()
    c, r = _upgrade_status(relay, "/v1/server", server_headers(server_id + "-3"))
    _assert_empty_error(r, 503)
    rec = relay.wait_log("conn_cap_reached", since=mark)
    assert rec.get("path") == "/v1/server" and rec.get("remote") == "127.0.0.1", rec
    assert rec.get("level") == "WARN", rec
    c, r = _upgrade_status(relay, "/v1/client", client_headers(server_id))
    _assert_empty_error(r, 503)
    assert relay.wait_log("conn_cap_reached", since=mark, path="/v1/client")
    # /healthz is not capped
    assert relay.healthz()["connected_phones"] == 1
    # one leaves -> a new one fits (bounded retry: the slot is released when the relay
    # finishes closing that connection)
    p1.send_close(1000)
    p1.read_close()
    p1.wait_closed(7, allow_data=True)
    p1.close()  # as a real client does after the close handshake
    deadline = time.monotonic() + 3
    while True:
        c, r = _upgrade_status(relay, "/v1/client", client_headers(server_id))
        if r.status == 101 or time.monotonic() > deadline:
            break
        time.sleep(0.25)  # (each attempt takes a rate-limit token: stay well under 20)
    assert r.status == 101, f"after a connection closed: {r!r}"
    relay.wait_log("phone_registered", since=mark, server_id=server_id)
    assert b1.is_open(0.05)
