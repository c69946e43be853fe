"""Limits end to end: binary->phone back-pressure (reference §5.7), the per-IP upgrade
rate limiter (§6.1), the global connection cap (§4.7) and their order (§1.7)."""

import json
import socket
import threading
import time

import pytest

from relayctl import (BACKLOG, LOCAL_IP, OP_PING, OP_PONG, OP_TEXT, answer_pings_for, barrier, barrier_skipping_notices,
                      build_frame, build_upgrade, claim, client_headers, close_and_wait, directive, expect_close,
                      merge_headers, RawConn, read_notice, read_text, read_wrapped, register, route, server_headers,
                      unique_id, wait_until, wrapped)

# --------------------------------------------------------------------------------------
# back-pressure


def test_burst_of_300_small_frames_arrives_complete_in_order(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    head = b'{"conn_id":' + json.dumps(cid).encode() + b',"frame":'
    frames = [b'{"seq":%d,"pad":"%s"}' % (i, b"p" * 1000) for i in range(300)]
    b.send(b"".join(build_frame(OP_TEXT, head + f + b"}") for f in frames), timeout=10)
    for i, f in enumerate(frames):
        got = read_text(p, timeout=10)
        assert got == f, f"frame {i}: got {got[:40]!r}..."
    barrier(p)
    barrier(b)


PHONE_OUTBOX_BUDGET = 4 * 1024 * 1024  # §5.7
BIG_FRAME = 250 * 1024


def _sysctl_ints(name, default):
    try:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return default


def stalled_phone_frames(frame_bytes: int) -> int:
    """How many frames of `frame_bytes` must go to a phone that never reads before a relay
    that keeps the §5.7 budget (4 MiB, not counting bytes the kernel already took) must
    overflow. A socket that never reads keeps its initial receive window (Linux grows it
    only as the application reads), so the loopback socket buffers can take the relay's
    send buffer (at most tcp_wmem max) plus the phone's receive buffer (tcp_rmem default):
    ~4.1 MiB here, which with the budget overflows well before 16 MiB (64 x 250 KiB, the
    floor). A host with larger buffers gets more frames."""
    wmem_max = _sysctl_ints("tcp_wmem", [4096, 16384, 4194304])[2]
    rmem_default = _sysctl_ints("tcp_rmem", [4096, 131072, 6291456])[1]
    absorbable = wmem_max + rmem_default + PHONE_OUTBOX_BUDGET
    return max(64, -(-absorbable // frame_bytes) + 1)


def test_stalled_phone_closed_backlog_full_sibling_keeps_receiving(relay, server_id):
    b = claim(relay, server_id)
    stalled, scid = register(relay, server_id)  # never reads until the relay gave up on it
    sib, cid = register(relay, server_id)
    mark = relay.log_mark()
    big_head = b'{"conn_id":' + json.dumps(scid).encode() + b',"frame":'
    n_big = stalled_phone_frames(BIG_FRAME)
    big = [b'"%03d' % i + b"B" * BIG_FRAME + b'"' for i in range(n_big)]  # 64 x 250 KiB = 16 MiB here
    got_sib = []
    errors = []

    def read_sibling():
        try:
            for _ in range(n_big):
                got_sib.append(read_text(sib, timeout=15))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=read_sibling, daemon=True)
    t.start()
    t0 = time.monotonic()
    for i in range(n_big):
        b.send(build_frame(OP_TEXT, big_head + big[i] + b"}"), timeout=15)
        route(b, cid, b'{"sib":%d}' % i)
    t.join(20)
    assert not errors, errors
    assert got_sib == [b'{"sib":%d}' % i for i in range(n_big)]
    assert time.monotonic() - t0 < 15
    # the relay gave up on the stalled phone because its queue overflowed (§5.7)
    try:
        rec = relay.wait_log("binary_forwarder_phone_enqueue_failed", since=mark, timeout=6, conn_id=scid)
    except AssertionError:
        raise AssertionError(f"{n_big} x 250 KiB routed to a phone that never reads: "
                             f"no binary_forwarder_phone_enqueue_failed within 6 s") from None
    assert rec.get("err") == "phone delivery backlog full", rec
    # the binary was never blocked nor disconnected (a close notice for the stalled phone
    # may already be there: which code it carries is an open question upstream, §4.6)
    notices = barrier_skipping_notices(b, [scid])
    barrier(sib)
    # now the stalled phone reads what it was sent: a prefix of the big frames, in order,
    # then the close with 1011 "phone backlog full"
    t_read = time.monotonic()
    n = 0
    while True:
        f = stalled.read_frame(timeout=10)
        if f.opcode == 0x8:
            break
        if f.opcode in (0x9, 0xA):
            continue
        assert f.opcode == OP_TEXT and f.fin
        assert f.payload == big[n], f"stalled phone frame {n} out of order or damaged"
        n += 1
    assert (f.close_code, f.close_reason) == BACKLOG, f"stalled phone closed with {f!r}"
    assert n < n_big
    assert n * BIG_FRAME <= max(16 * 1024 * 1024, n_big * BIG_FRAME)
    stalled.send_quietly(build_frame(0x8, b"\x03\xf3"))
    stalled.wait_closed(6, allow_data=True)
    assert time.monotonic() - t_read < 5, "reading the stalled phone's backlog took too long"
    notices += barrier_skipping_notices(b, [scid])
    assert len(notices) <= 1, notices
    # and the sibling still works afterwards, both ways
    route(b, cid, b'"after"')
    assert read_text(sib) == b'"after"'
    sib.send_json({"up": 1})
    assert read_wrapped(b) == (cid, b'{"up":1}')
    assert relay.healthz()["connected_binaries"] == 1


def _phone_pauses(relay) -> int:
    for line in relay.metrics_text().splitlines():
        if line.startswith("pyrycode_relay_phone_pauses_total"):
            return int(float(line.split()[-1]))
    raise AssertionError("no pyrycode_relay_phone_pauses_total in the scrape")


def test_phone_paused_by_back_pressure_longer_than_heartbeat_timeout_stays(relay_factory, server_id):
    """A phone whose reading is paused because its binary is backed up cannot have its
    pongs read: the heartbeat is suspended while it is paused and resumes after, so a
    pause longer than the heartbeat timeout does not close a live phone as dead."""
    interval, timeout = 5.0, 1.0
    relay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "0", "--heartbeat-interval", "5s",
                                                    "--heartbeat-timeout", "1s"])
    mark = relay.log_mark()
    t_claim = time.monotonic()
    # a binary with a small window, so what it does not read stays in the relay's outbox
    b = relay.ws("/v1/server", server_headers(server_id), rcvbuf=65536, mss=1400)
    relay.wait_log("server_claimed", since=mark, server_id=server_id)
    time.sleep(max(0.0, t_claim + interval / 2 - time.monotonic()))
    t_reg = time.monotonic()  # the phones' pings fall half an interval after the binary's
    pusher, pcid = register(relay, server_id)
    watched, wcid = register(relay, server_id)
    ping = b.read_frame(timeout=interval + 2)  # the binary's first heartbeat ping
    assert ping.opcode == OP_PING, ping
    b.send_frame(OP_PONG, ping.payload)
    t_ping = time.monotonic()
    # the pusher fills the binary's outbox past its high-water mark (4 MiB): every phone
    # of the server-id is paused, and stays paused while the binary does not read
    frame = b'"' + b"p" * (200 * 1024) + b'"'
    pusher.send_in_background(build_frame(OP_TEXT, frame) * 30, timeout=30)
    wait_until(lambda: _phone_pauses(relay) >= 1, 3, what="the phones' pause")
    due = t_reg + interval  # the watched phone's first ping would be due here
    assert time.monotonic() < due - 0.3, "too slow to test: paused after the phone's ping was due"
    # hold the pause past that ping's pong deadline; a ping that came would be answered
    answer_pings_for(watched, due + timeout + 0.8 - time.monotonic())
    assert time.monotonic() < t_ping + interval, "too slow to test: the binary's next ping is due"
    # the binary reads again: the phones resume and the watched one is still there
    got = []
    while True:
        f = b.read_frame(timeout=5)
        if f.opcode == OP_PING:
            b.send_frame(OP_PONG, f.payload)
            continue
        got.append(f.payload)
        if len(got) == 1:
            watched.send_json({"alive": 1})
        if wcid.encode() in f.payload:
            break
    assert f.payload == wrapped(wcid, b'{"alive":1}'), f.payload[:200]
    assert all(g == wrapped(pcid, frame) for g in got[:-1])
    route(b, wcid, b'"still-here"')
    assert read_text(watched) == b'"still-here"'
    # its heartbeat runs again (the binary keeps reading the pusher's rest meanwhile)
    stop = threading.Event()

    def binary_reads():
        while not stop.is_set():
            try:
                f = b.read_frame(timeout=0.5)
            except TimeoutError:
                continue
            if f.opcode == OP_PING:
                b.send_frame(OP_PONG, f.payload)

    t = threading.Thread(target=binary_reads, daemon=True)
    t.start()
    try:
        assert answer_pings_for(watched, interval + timeout + 0.5) >= 1
    finally:
        stop.set()
        t.join(3)
    assert not relay.find_logs("phone_forwarder_read_end", since=mark, conn_id=wcid)
    assert not relay.find_logs("binary_forwarder_read_end", since=mark)


def _small_window_phone(relay, server_id):
    """A phone whose socket advertises a tiny window (4 KiB receive buffer, 536-byte
    segments), so what it does not read stays in the relay's outbox rather than in
    loopback's megabytes of socket buffers. Returns (phone, conn_id)."""
    mark = relay.log_mark()
    p = relay.ws("/v1/client", client_headers(server_id), rcvbuf=4096, mss=536)
    return p, relay.wait_log("phone_registered", since=mark, server_id=server_id)["conn_id"]


def _route_many(b, cid, n, size):
    head = b'{"conn_id":' + json.dumps(cid).encode() + b',"frame":'
    frames = [b'"%04d' % i + b"s" * size + b'"' for i in range(n)]
    b.send(b"".join(build_frame(OP_TEXT, head + f + b"}") for f in frames), timeout=15)
    return frames


def test_slow_reading_phone_cut_by_write_deadline_with_1011(relay_factory, server_id):
    """§5.4: each write to a phone has 10 s. A phone that keeps reading, but a few hundred
    bytes a second, does not get its outbox's head segment written within 10 s: it is
    closed 1011 "phone write failed" (§5.7), the close frame going out after what was
    queued, so a phone that catches up sees it; its sibling is untouched. Plaintext: the
    catching up is timed against the 5 s close handshake, and a TLS reader with the
    tiny window this test sets does not drain 600 KB in it."""
    relay = relay_factory.start(args=["--rate-limit-burst", "0"], tls=False)
    b = claim(relay, server_id)
    slow, scid = _small_window_phone(relay, server_id)
    sib, cid = register(relay, server_id)
    mark = relay.log_mark()
    frames = _route_many(b, scid, 300, 2000)  # 600 KB: well inside the 4 MiB budget
    route(b, cid, b'"sib-before"')
    assert read_text(sib) == b'"sib-before"'
    t0 = time.monotonic()
    got = bytearray()
    while not relay.find_logs("binary_forwarder_phone_send_failed", since=mark, conn_id=scid):
        assert time.monotonic() - t0 < 30, "a phone reading 1.25 KB/s was never cut off"
        slow.sock.settimeout(0.2)
        try:
            chunk = slow.sock.recv(256)  # "very slowly": 256 bytes every 0.2 s
        except socket.timeout:
            chunk = b""
        assert chunk or not slow.eof, "closed before the write deadline was logged"
        got += chunk
        time.sleep(0.2)
    took = time.monotonic() - t0
    assert took >= 8, f"cut after {took:.1f}s: the write deadline is 10 s"
    rec = relay.find_logs("binary_forwarder_phone_send_failed", since=mark, conn_id=scid)[0]
    assert rec["err"] == "write deadline exceeded" and rec["server_id"] == server_id, rec
    # it catches up now: the frames queued before the failure, in order, then the 1011
    slow.buf[:0] = got
    n = 0
    while True:
        f = slow.read_frame(timeout=5)
        if f.opcode == 0x8:
            break
        if f.opcode in (0x9, 0xA):
            continue
        assert f.payload == frames[n], f"frame {n} damaged or out of order"
        n += 1
    assert (f.close_code, f.close_reason) == (1011, b"phone write failed"), f
    slow.send_quietly(build_frame(0x8, b"\x03\xf3"))
    slow.wait_closed(6, allow_data=True)
    rec = relay.wait_log("phone_forwarder_read_end", since=mark, conn_id=scid)
    assert rec["err"] == "write deadline exceeded", rec
    # the binary and the sibling are unaffected
    barrier_skipping_notices(b, [scid])
    route(b, cid, b'"sib-after"')
    assert read_text(sib) == b'"sib-after"'
    sib.send_json({"up": 1})
    assert read_wrapped(b) == (cid, b'{"up":1}')


def test_close_directive_frame_not_taken_logs_close_frame_send_failed(relay_factory, server_id):
    """§5.7: the writer that cannot deliver a close directive's frame logs
    binary_forwarder_close_frame_send_failed with the directive's code. Here the phone
    does not take what is queued before the directive's close within the close
    handshake's 5 s, so it is cut with the frame unwritten."""
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    stuck, scid = _small_window_phone(relay, server_id)  # never reads
    mark = relay.log_mark()
    _route_many(b, scid, 150, 2000)
    directive(b, scid, 4401, b'{"bye":1}')
    rec = relay.wait_log("binary_forwarder_close_frame_send_failed", since=mark, timeout=9, conn_id=scid)
    assert rec["close_code"] == "4401" and rec["server_id"] == server_id, rec
    stuck.wait_closed(3, allow_data=True)
    relay.wait_log("phone_unregistered", since=mark, conn_id=scid)
    # a directive whose frame does get out logs no such line
    p, cid = register(relay, server_id)
    mark = relay.log_mark()
    directive(b, cid, 4402, b'{"bye":2}')
    assert read_text(p) == b'{"bye":2}'
    expect_close(p, (4402, b""))
    relay.wait_log("phone_unregistered", since=mark, conn_id=cid)
    assert not relay.find_logs("binary_forwarder_close_frame_send_failed", since=mark)


# --------------------------------------------------------------------------------------
# per-IP upgrade rate limit


def _attempt(relay, path, headers, expect=None):
    c = relay.connect()
    c.send(build_upgrade(path, headers))
    r = c.read_http_response()
    if expect is not None:
        assert r.status == expect, f"{path}: expected {expect}, got {r!r}"
    return c, r


def _assert_empty_error(r, status):
    assert r.status == status, r
    assert r.body == b"\n", r
    assert r.header("Content-Type") == "text/plain; charset=utf-8", r
    assert r.header("X-Content-Type-Options") == "nosniff", r
    assert not r.has_header("Retry-After"), r


def test_rate_limit_21st_attempt_429(relay, server_id):
    mark = relay.log_mark()
    outcomes = []
    admitted = []
    # 20 mixed attempts on both endpoints, with every outcome: 101 claim, 101+4404,
    # 400 header gate, 4xx handshake error, 101+4409 would need a probe, skipped
    for i in range(20):
        kind = i % 4
        if kind == 0:
            c, r = _attempt(relay, "/v1/server", server_headers(f"{server_id}-{i}"), 101)
            admitted.append(c)
        elif kind == 1:
            c, r = _attempt(relay, "/v1/client", client_headers(unique_id("nobody")), 101)
        elif kind == 2:
            c, r = _attempt(relay, "/v1/client", merge_headers(client_headers(server_id),
                                                               {"X-Pyrycode-Token": None}), 400)
        else:
            c, r = _attempt(relay, "/v1/server", merge_headers(server_headers(server_id),
                                                               {"Sec-WebSocket-Version": "12"}))
            assert 400 <= r.status < 500 and r.status != 429, r
        outcomes.append(r.status)
        assert relay.http("GET", "/healthz").status == 200
    # both endpoints share the bucket; the limit comes before the header gate (§1.7):
    # requests without the pyrycode headers get 429, not 400
    denied = [("/v1/client", client_headers(server_id)), ("/v1/server", server_headers(server_id)),
              ("/v1/server", {"X-Pyrycode-Server": None}), ("/v1/client", {})]
    for path, hdrs in denied:
        _, r = _attempt(relay, path, hdrs)
        _assert_empty_error(r, 429)
    rec = relay.wait_log("rate_limited", since=mark)
    assert rec["level"] == "WARN"
    assert rec["remote"] == '"127.0.0.1"', rec  # the quoted IP string (§6.1)
    wait_until(lambda: len(relay.find_logs("rate_limited", since=mark)) >= len(denied), 2,
               what="one rate_limited per deny")
    assert len(relay.find_logs("rate_limited", since=mark)) == len(denied)
    assert not relay.find_logs("server_claimed", since=mark, server_id=server_id), "a denied upgrade claimed"
    # /healthz is never rate limited
    for _ in range(30):
        assert relay.http("GET", "/healthz").status == 200
    # the admitted connections are unaffected
    for c in admitted:
        barrier(c)


def test_rate_limit_spent_by_plain_requests_the_header_gate_refuses(relay, server_id):
    """Requests to /v1/* that are not even upgrades (a GET with only X-Pyrycode-Server)
    spend the bucket too: the limit is checked first (§1.7)."""
    for i in range(20):
        r = relay.http("GET", "/v1/server", {"X-Pyrycode-Server": f"{server_id}-{i}"})  # missing headers
        assert r.status == 400, f"attempt {i + 1}: {r!r}"
    _, r = _attempt(relay, "/v1/client", {})
    _assert_empty_error(r, 429)
    _, r = _attempt(relay, "/v1/server", server_headers(server_id))
    _assert_empty_error(r, 429)


def test_rate_limit_refills(relay_factory, server_id):
    relay = relay_factory.start(args=["--rate-limit-burst", "3", "--rate-limit-refill", "1s"])
    t0 = time.monotonic()
    for i in range(3):
        _attempt(relay, "/v1/server", server_headers(f"{server_id}-{i}"), 101)
    _, r = _attempt(relay, "/v1/server", server_headers(f"{server_id}-x"))
    _assert_empty_error(r, 429)
    assert time.monotonic() - t0 < 0.9, "too slow to test the refill"
    time.sleep(1.15 - (time.monotonic() - t0))
    _attempt(relay, "/v1/server", server_headers(f"{server_id}-y"), 101)
    _, r = _attempt(relay, "/v1/server", server_headers(f"{server_id}-z"))
    _assert_empty_error(r, 429)


def test_rate_limit_burst_0_disables_limiter(relay_factory, server_id):
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    cids = set()
    for _ in range(40):
        c, r = _attempt(relay, "/v1/client", client_headers(server_id), 101)
        close_and_wait(c)
        cid, code = read_notice(b)
        assert code == 1000 and cid not in cids
        cids.add(cid)
    assert not relay.find_logs("rate_limited")
    barrier(b)


XFF_FALLS_BACK = {
    "header-empty": "",
    "left-most-empty": " , 203.0.113.9",
    "left-most-blank": "   ,198.51.100.4",
    "only-a-comma": ",",
}


@pytest.mark.parametrize("case", list(XFF_FALLS_BACK))
def test_x_forwarded_for_without_a_left_most_entry_keys_on_the_socket(relay_factory, server_id, case):
    """§6.1 with --trust-x-forwarded-for: the left-most entry, trimmed, is the key; a header
    that yields no non-empty left-most entry falls back to the socket address, exactly as
    the Go relay's ClientIP (its test XFF_Enabled_WhitespaceOnlyFirstEntry_FallsBackToRemoteAddr):
    it is not an empty key, so it is not refused as one."""
    relay = relay_factory.start(args=["--rate-limit-burst", "1", "--rate-limit-refill", "1m",
                                      "--trust-x-forwarded-for"])
    xff = {"X-Forwarded-For": XFF_FALLS_BACK[case]}
    mark = relay.log_mark()
    # the socket address's one token: the first attempt passes, the second does not
    _attempt(relay, "/v1/server", merge_headers(server_headers(server_id), xff), 101)
    assert relay.wait_log("server_claimed", since=mark, server_id=server_id)["remote"] == LOCAL_IP
    _, r = _attempt(relay, "/v1/server", merge_headers(server_headers(server_id + "-2"), xff))
    _assert_empty_error(r, 429)
    assert relay.wait_log("rate_limited", since=mark)["remote"] == f'"{LOCAL_IP}"'
    # a real left-most entry is its own key; the spent socket bucket does not matter
    _attempt(relay, "/v1/server", merge_headers(server_headers(server_id + "-3"),
                                                 {"X-Forwarded-For": " 203.0.113.7 , 10.0.0.1"}), 101)
    _, r = _attempt(relay, "/v1/server", merge_headers(server_headers(server_id + "-4"),
                                                        {"X-Forwarded-For": "203.0.113.7"}))
    _assert_empty_error(r, 429)
    assert relay.wait_log("rate_limited", since=mark, remote='"203.0.113.7"')


def test_ipv4_client_on_all_address_listener_is_plain_ipv4(relay_factory, server_id):
    """On `:PORT` (an IPv6 socket that takes IPv4 too) an IPv4 client is a.b.c.d, as Go
    prints it, not ::ffff:a.b.c.d: in the logs, and as the rate-limit key, so the
    socket's key and an X-Forwarded-For entry naming the same address share a bucket."""
    relay = relay_factory.start(host="", args=["--rate-limit-burst", "1", "--rate-limit-refill", "1m",
                                               "--trust-x-forwarded-for"])
    assert relay.args[1].startswith(":"), relay.args
    mark = relay.log_mark()
    claim(relay, server_id)  # no X-Forwarded-For: keyed on the socket address, the only token
    assert relay.wait_log("server_claimed", since=mark, server_id=server_id)["remote"] == LOCAL_IP
    _, r = _attempt(relay, "/v1/client", client_headers(server_id))
    _assert_empty_error(r, 429)
    assert relay.wait_log("rate_limited", since=mark)["remote"] == f'"{LOCAL_IP}"'
    _, r = _attempt(relay, "/v1/client", merge_headers(client_headers(server_id), {"X-Forwarded-For": LOCAL_IP}))
    _assert_empty_error(r, 429)  # the same key: the same, spent bucket
    _, r = _attempt(relay, "/v1/client", merge_headers(client_headers(server_id), {"X-Forwarded-For": "10.9.8.7"}))
    assert r.status == 101, r
    assert not [rec for rec in relay.log_records(mark) if "::ffff:" in rec["_raw"]]
    assert relay.stop() == 0  # one relay at a time: each ring counts against nobody's locked memory

    capped = relay_factory.start(host="", args=["--max-connections", "1", "--rate-limit-burst", "0"])
    mark = capped.log_mark()
    claim(capped, server_id)  # the cap is 1: no phone fits
    _, r = _attempt(capped, "/v1/client", client_headers(server_id))
    _assert_empty_error(r, 503)
    assert capped.wait_log("conn_cap_reached", since=mark)["remote"] == LOCAL_IP


# --------------------------------------------------------------------------------------
# global connection cap


def test_connection_cap_503_then_slot_frees(relay_factory, server_id):
    relay = relay_factory.start(args=["--max-connections", "2", "--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    mark = relay.log_mark()
    for path, hdrs in (("/v1/client", client_headers(server_id)), ("/v1/server", server_headers("x" + server_id)),
                       ("/v1/client", {"User-Agent": "no-other-headers"})):  # cap runs before the header gate
        c, r = _attempt(relay, path, hdrs)
        _assert_empty_error(r, 503)
        rec = relay.wait_log("conn_cap_reached", since=mark, path=path)
        assert rec["level"] == "WARN" and rec["remote"] == LOCAL_IP
        mark = relay.log_mark()
    assert not relay.find_logs("phone_registered", since=mark)
    # /healthz is not capped
    assert relay.healthz()["connected_phones"] == 1
    # a slot frees when a WebSocket ends
    close_and_wait(p)
    assert read_notice(b) == (cid, 1000)
    deadline = time.monotonic() + 3
    while True:
        c, r = _attempt(relay, "/v1/client", client_headers(server_id))
        if r.status == 101:
            break
        assert r.status == 503 and time.monotonic() < deadline, f"slot not freed: {r!r}"
        time.sleep(0.05)
    c.send_json({"in": True})
    ncid, frame = read_wrapped(b)
    assert frame == b'{"in":true}' and ncid != cid
    barrier(c)


# Requests that pass the cap and are then answered without a WebSocket (§1.7 steps 9-10).
NON_WEBSOCKET_ANSWERS = {
    # header gate: 400, the connection stays open for the next request
    "400-header-gate": (lambda sid: build_upgrade("/v1/client", {"User-Agent": "x"}), 400, True),
    # handshake checks: 405 / 426, the relay closes after the answer (it waits for our FIN)
    "405-method": (lambda sid: build_upgrade("/v1/server", server_headers(sid), method="POST"), 405, False),
    "426-no-upgrade": (lambda sid: build_upgrade("/v1/server", merge_headers(server_headers(sid), {"Upgrade": None})),
                       426, False),
}


@pytest.mark.parametrize("answer", list(NON_WEBSOCKET_ANSWERS))
def test_request_answered_without_websocket_gives_its_slot_back(relay_factory, server_id, answer):
    """§4.7: the slot is held until the handler returns. A request answered with a
    4xx gives it back with its answer, also when the connection stays open (keep-alive,
    or a client that never closes its end): two such connections must not make a
    legitimate upgrade get 503 with --max-connections 2."""
    build, status, kept_alive = NON_WEBSOCKET_ANSWERS[answer]
    relay = relay_factory.start(args=["--max-connections", "2", "--rate-limit-burst", "0"])
    held = []
    for i in range(2):
        c = relay.connect()
        c.send(build(f"{server_id}-{i}"))
        r = c.read_http_response()
        assert r.status == status, r
        if kept_alive:
            c.send(build(f"{server_id}-{i}"))  # a second request on the same connection
            assert c.read_http_response().status == status
            assert c.is_open(0.05)
        held.append(c)  # never closed by us during the test
    b = claim(relay, server_id)  # 101 at once: neither connection holds a slot
    p, _ = register(relay, server_id)
    # the cap still counts the two WebSockets
    _, r = _attempt(relay, "/v1/client", client_headers(server_id))
    _assert_empty_error(r, 503)
    if kept_alive:
        for c in held:  # and the kept-alive connections still serve requests
            assert c.request("GET", "/healthz").status == 200
    barrier(b)
    barrier(p)


def _metric(relay, name):
    for line in relay.metrics_text().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape")


def test_max_connections_per_ip_caps_one_address(relay_factory, server_id):
    """--max-connections-per-ip (ours; the reference's deferred per-IP connection cap):
    WebSockets from one client IP beyond it get 503 (after the rate limit and the
    relay-wide cap, before the header gate), counted in
    pyrycode_relay_ip_cap_rejects_total; another address is not affected; a slot frees
    when one of them ends; exact across workers."""
    relay = relay_factory.start(metrics=True, args=["--max-connections-per-ip", "3", "--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    p1, cid1 = register(relay, server_id)
    register(relay, server_id)
    mark = relay.log_mark()
    for hdrs in (client_headers(server_id), {"User-Agent": "no-other-headers"}):  # before the header gate
        _, r = _attempt(relay, "/v1/client", hdrs)
        _assert_empty_error(r, 503)
    rec = relay.wait_log("conn_ip_cap_reached", since=mark, path="/v1/client")
    assert rec["level"] == "WARN" and rec["remote"] == LOCAL_IP, rec
    assert not relay.find_logs("conn_cap_reached", since=mark)
    assert _metric(relay, "pyrycode_relay_ip_cap_rejects_total") == 2
    # another source address has its own count
    other = relay.connect(source="127.0.0.2")
    try:
        other.upgrade("/v1/client", client_headers(server_id))
        barrier(other)
    finally:
        other.close()
    # a slot frees when one of the address's WebSockets ends
    close_and_wait(p1)
    assert cid1 in (read_notice(b)[0], read_notice(b)[0])  # the other address's phone left too
    wait_until(lambda: _attempt(relay, "/v1/client", client_headers(server_id))[1].status == 101, 3,
               what="the freed per-IP slot")
    assert _metric(relay, "pyrycode_relay_ip_cap_rejects_total") >= 2


def test_max_connections_per_ip_keys_on_x_forwarded_for_when_trusted(relay_factory, server_id):
    """Behind a trusted proxy every client arrives from the proxy's address: the per-IP
    count uses the rate limiter's key, the left-most X-Forwarded-For entry."""
    relay = relay_factory.start(args=["--max-connections-per-ip", "2", "--rate-limit-burst", "0",
                                      "--trust-x-forwarded-for"])
    xff = lambda ip: {"X-Forwarded-For": f"{ip}, 127.0.0.1"}  # noqa: E731
    _attempt(relay, "/v1/server", merge_headers(server_headers(server_id), xff("198.51.100.1")), 101)
    _attempt(relay, "/v1/client", merge_headers(client_headers(server_id), xff("198.51.100.1")), 101)
    _, r = _attempt(relay, "/v1/client", merge_headers(client_headers(server_id), xff("198.51.100.1")))
    _assert_empty_error(r, 503)
    assert relay.wait_log("conn_ip_cap_reached")["remote"] == LOCAL_IP  # the socket's, as conn_cap_reached
    for _ in range(2):
        _attempt(relay, "/v1/client", merge_headers(client_headers(server_id), xff("198.51.100.2")), 101)


def test_max_connections_per_ip_default_follows_the_cap(relay_factory, server_id):
    """Unset, it is a tenth of --max-connections, at least 16 and at most 1000: with
    --max-connections 40 one address gets 16 and the 17th is refused."""
    relay = relay_factory.start(args=["--max-connections", "40", "--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    phones = [register(relay, server_id)[0] for _ in range(15)]
    _, r = _attempt(relay, "/v1/client", client_headers(server_id))
    _assert_empty_error(r, 503)
    relay.wait_log("conn_ip_cap_reached")
    barrier(b)
    barrier(phones[-1])


@pytest.mark.parametrize("who", ["phone-initiated", "relay-initiated", "registry-reject"])
def test_connection_slot_freed_when_close_handshake_completes(relay_factory, server_id, who):
    """The cap slot is held until the WebSocket ends (the handler returns, §4.7): once the
    close handshake has completed and the relay has closed its side, the slot is free even
    if the peer has not closed its end of TCP yet."""
    relay = relay_factory.start(args=["--max-connections", "2", "--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    if who == "phone-initiated":
        p.send_close(1000)
        assert p.read_close() == (1000, b"")
    elif who == "relay-initiated":
        directive(b, cid, 4401)
        assert p.read_close() == (4401, b"")
        p.send_close(4401)
    else:
        close_and_wait(p)
        assert read_notice(b) == (cid, 1000)
        p, _ = _attempt(relay, "/v1/client", client_headers(unique_id("nobody")), 101)
        assert p.read_close() == (4404, b"no server with that id")
        p.send_close(4404)
    p.wait_closed(5, allow_data=True)   # the relay closed TCP; our end stays open
    if who == "phone-initiated":
        assert read_notice(b) == (cid, 1000)
    t0 = time.monotonic()
    while True:
        c, r = _attempt(relay, "/v1/client", client_headers(server_id))
        if r.status == 101:
            break
        took = time.monotonic() - t0
        assert took < 1.0, f"slot still held {took:.2f}s after the close handshake: {r.status}"
        time.sleep(0.05)


def test_connection_cap_counts_registry_rejects_only_while_they_last(relay_factory, server_id):
    relay = relay_factory.start(args=["--max-connections", "1", "--rate-limit-burst", "0"])
    for _ in range(5):  # each 4404 frees its slot when it ends
        c, _ = _attempt(relay, "/v1/client", client_headers(unique_id("nobody")), 101)
        expect_close(c, (4404, b"no server with that id"))
        deadline = time.monotonic() + 3
        while relay.healthz()["connected_phones"] and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)
    claim(relay, server_id)


def test_order_rate_limit_before_cap_before_header_gate(relay_factory, server_id):
    relay = relay_factory.start(args=["--max-connections", "1", "--rate-limit-burst", "3",
                                      "--rate-limit-refill", "1m"])
    claim(relay, server_id)                                        # token 1, the only slot
    _, r = _attempt(relay, "/v1/client", {"User-Agent": "x"})      # token 2: cap before header gate
    _assert_empty_error(r, 503)
    _, r = _attempt(relay, "/v1/client", client_headers(server_id))  # token 3
    _assert_empty_error(r, 503)
    _, r = _attempt(relay, "/v1/client", client_headers(server_id))  # no token: 429 before 503
    _assert_empty_error(r, 429)
    _, r = _attempt(relay, "/v1/client", {"User-Agent": "x"})      # 429 before 400
    _assert_empty_error(r, 429)
