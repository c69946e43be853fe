"""Abuse (issue #16): hostile input and exhaustion on loopback, each bounded in time and
in count. The relay must keep serving the legitimate clients meanwhile and come back to
normal afterwards.

Already covered elsewhere, not repeated here:
- a phone that never reads is closed 1011 "phone backlog full" at its 4 MiB budget while
  its sibling keeps receiving: test_limits.py::test_stalled_phone_closed_backlog_full_sibling_keeps_receiving
  (and a phone reading too slowly: ::test_slow_reading_phone_cut_by_write_deadline_with_1011);
- oversized heads (431), malformed ones (400), oversized messages and declared lengths
  up to 2^40 (1009), one connection at a time: test_http.py, test_ws.py (VIOLATIONS);
- the connection caps at their smallest (503, the slot freed): test_limits.py;
- the receive ring growing under a burst: test_metrics.py::test_receive_ring_starts_small_and_grows_under_a_burst;
- the RLIMIT_NOFILE raise at start-up: test_boot.py.

These run in the gcc 4-worker stage only: none of them depends on the worker count or
TLS (the ones that need one worker pin it), and the sanitizer builds would only make
the timing-bound ones slower.
"""

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from relayctl import (E2E_DIR, OP_CLOSE, OP_TEXT, ConnClosed, RawConn, barrier, build_frame, build_request, build_upgrade, claim,
                      client_headers, read_text, read_wrapped, register, route, server_headers, tls_enabled,
                      unique_id, wait_healthz, wait_until, wrapped)

_bin = os.environ.get("RELAY_BIN", "")
pytestmark = pytest.mark.skipif(
    tls_enabled() or os.environ.get("RELAY_WORKERS", "4") != "4" or re.search(r"-(asan|tsan)/", _bin) is not None,
    reason="abuse tests run in the gcc 4-worker stage only")

# The test process holds 2,500 sockets at once (the ring test) and the slowloris attacker
# 3,000; both inherit this process's limit. A soft limit of 1024 (Debian's default) is
# raised to the hard one, which needs no privilege.
NOFILE_NEEDED = 4096
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _hard >= NOFILE_NEEDED:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(_soft, NOFILE_NEEDED), _hard))


@pytest.fixture(autouse=True)
def _enough_descriptors():
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < NOFILE_NEEDED:
        pytest.skip(f"RLIMIT_NOFILE {soft} < {NOFILE_NEEDED}: raise the hard limit (ulimit -Hn)")


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(relay, name: str) -> float:
    total, seen = 0.0, False
    for line in relay.metrics_text().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.split()[-1])
            seen = True
    assert seen, f"{name} not in the scrape"
    return total


def quantile(xs, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# --------------------------------------------------------------------------------------
# slowloris


SLOWLORIS_CONNS = 3000
HEAD_DEADLINE_S = 5.0
ROUNDS = 3
BASE_PHASE_S = 4.0
ATTACK_PHASE_S = 7.0   # the first connections hit their deadline at ~5 s, their successors start
P99_RATIO_MAX = 1.10
P99_FLOOR_S = 0.0003


def round_trips(b, p, cid, seconds: float) -> list:
    """Phone -> relay -> binary -> relay -> phone, one at a time, for `seconds`."""
    out = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        frame = b'{"rt":%d}' % n
        t0 = time.perf_counter()
        p.send_frame(OP_TEXT, frame)
        got = read_wrapped(b)
        assert got == (cid, frame), got
        route(b, cid, frame)
        assert read_text(p) == frame
        out.append(time.perf_counter() - t0)
        n += 1
    return out


def window_p99s(b, p, cid, seconds: float) -> list:
    """Round trips for `seconds`, as the p99 of each whole second."""
    out = []
    for _ in range(int(seconds)):
        out.append(quantile(round_trips(b, p, cid, 1.0), 0.99))
    return out


def median(xs):
    return quantile(xs, 0.5)


def test_slowloris_thousands_hit_the_head_deadline_legit_p99_unmoved(relay_factory, server_id):
    """3,000 connections each send a request head one byte a second and never finish it:
    each is dropped at the 5 s head deadline (the attacker replaces it at once, so 3,000
    stay open), and a legitimate phone/binary pair's round-trip p99 moves by at most 10%.

    Measuring that on a shared 2-core VM, where other jobs come and go:
    - the attacker runs in its own process at nice 19 (a real one is on other machines:
      here it would otherwise take one of the two cores from the relay or the measured
      client, and the test would measure the host, not the relay), and its connects are
      spread over a second, so the deadlines are too;
    - baseline and attack phases alternate (B A B A B A), so a drift of the host falls
      on both sides alike;
    - each side's p99 is the median of the p99s of its one-second windows (a few
      thousand round trips each): one window spoilt by another job's burst moves a
      pooled p99 by milliseconds, but not the median of 12 or 21 windows;
    - the bound is 10% of the baseline or P99_FLOOR_S (0.3 ms) if that is larger: a
      loopback round trip through Python is ~0.2 ms, and 10% of it (20 us) is less than
      one scheduler tick of the attacker taking a core from the client on 2 cores. The
      floor still fails a relay that a slowloris flood slows down: a worker loop stalled
      on 3,000 connections costs milliseconds.
    The 3,000 connections need 3,000 descriptors in the relay and in the attacker
    (this host allows 20,000 per process); a production host raises LimitNOFILE
    (deploy/systemd) for its --max-connections."""
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    round_trips(b, p, cid, 0.5)  # warm-up
    base, attack, lifetimes = [], [], []
    closed = 0
    for _ in range(ROUNDS):
        base += window_p99s(b, p, cid, BASE_PHASE_S)
        atk = subprocess.Popen([sys.executable, str(E2E_DIR / "slowloris.py"), "--host", relay.host,
                                "--port", str(relay.port), "--conns", str(SLOWLORIS_CONNS),
                                "--src", "127.0.0.3,127.0.0.4", "--max-seconds", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            up = json.loads(atk.stdout.readline() or "{}")
            assert up.get("up") == SLOWLORIS_CONNS, f"slowloris: {up} {atk.stderr.read() if atk.poll() else ''}"
            attack += window_p99s(b, p, cid, ATTACK_PHASE_S)
        finally:
            atk.send_signal(signal.SIGTERM)
            out, err = atk.communicate(timeout=30)
        res = json.loads(out.strip().splitlines()[-1])
        assert not res["errors"], res["errors"]
        lifetimes += res["lifetimes"]
        closed += res["closed_by_relay"]
    p99_base, p99_attack = median(base), median(attack)
    lifetimes.sort()
    print(f"round-trip p99 (median of 1 s windows): {p99_base * 1e6:.0f}us without, {p99_attack * 1e6:.0f}us "
          f"under slowloris (windows {[round(x * 1e6) for x in base]} / {[round(x * 1e6) for x in attack]}); "
          f"slowloris closed {closed}, lifetimes {lifetimes[0] if lifetimes else None}.."
          f"{lifetimes[-1] if lifetimes else None} s")
    # every slowloris connection of the first wave hit the deadline, none was cut early
    assert closed >= ROUNDS * SLOWLORIS_CONNS, f"only {closed} slowloris connections were closed by the relay"
    assert lifetimes[0] >= HEAD_DEADLINE_S - 0.2, f"a slowloris connection was closed after {lifetimes[0]} s"
    assert quantile(lifetimes, 0.99) <= HEAD_DEADLINE_S + 1.5, f"p99 lifetime {quantile(lifetimes, 0.99)} s"
    assert p99_attack <= max(p99_base * P99_RATIO_MAX, p99_base + P99_FLOOR_S), \
        f"p99 round trip {p99_attack * 1e6:.0f}us under slowloris vs {p99_base * 1e6:.0f}us without"
    barrier(b)
    barrier(p)
    assert relay.healthz()["connected_phones"] == 1


# --------------------------------------------------------------------------------------
# an upgrade flood from one address


def test_upgrade_flood_from_one_address_429_while_another_address_proceeds(relay_factory, server_id):
    """400 upgrade attempts at once from 127.0.0.1: the burst (20) gets 101, every other
    one 429 (a refill or two may land during the flood); meanwhile a binary and a phone
    from 127.0.0.2 upgrade and exchange frames as if nothing happened."""
    relay = relay_factory.start()  # the default limiter: burst 20, one refill per 6 s
    flood = [relay.connect() for _ in range(400)]
    t0 = time.monotonic()
    for i, c in enumerate(flood):
        c.send(build_upgrade("/v1/server", server_headers(f"{server_id}-f{i}")))
    # the other address, in the middle of the flood
    ob = relay.ws("/v1/server", server_headers(server_id), source="127.0.0.2")
    op = relay.ws("/v1/client", client_headers(server_id), source="127.0.0.2")
    statuses = [c.read_http_response(timeout=10).status for c in flood]
    took = time.monotonic() - t0
    ok = statuses.count(101)
    assert 20 <= ok <= 20 + int(took / 6) + 1, f"{ok} upgrades admitted in {took:.1f} s"
    assert statuses.count(429) == 400 - ok, sorted(set(statuses))
    op.send_json({"from": "127.0.0.2"})
    cid, frame = read_wrapped(ob)
    assert frame == b'{"from":"127.0.0.2"}'
    route(ob, cid, b'"back"')
    assert read_text(op) == b'"back"'
    assert relay.find_logs("rate_limited", remote='"127.0.0.1"')
    assert not relay.find_logs("rate_limited", remote='"127.0.0.2"')
    assert relay.http("GET", "/healthz").status == 200


# --------------------------------------------------------------------------------------
# a binary that never reads


def test_binary_that_never_reads_pauses_its_phones_with_bounded_memory(relay_factory, server_id):
    """8 phones push 200 KiB frames as fast as they can (40 MiB in all) to a binary that
    reads nothing: the relay pauses the phones (it stops reading them) once the binary's
    outbox is past its high-water mark, so the relay's RSS grows by the outbox and a
    message per phone, not by what the phones tried to send; another server-id's pair
    keeps its round trips meanwhile. When the binary reads again, every frame arrives,
    each phone's in order."""
    relay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "0"], tls=False)
    pid = relay.proc.pid
    b = relay.ws("/v1/server", server_headers(server_id), rcvbuf=65536, mss=1400)
    relay.wait_log("server_claimed", server_id=server_id)
    phones = [register(relay, server_id) for _ in range(8)]
    other = unique_id("other")
    ob = claim(relay, other)
    op, ocid = register(relay, other)
    round_trips(ob, op, ocid, 0.2)
    rss0 = vm_rss_kib(pid)
    n_frames, size = 25, 200 * 1024
    frames = {cid: [b'"%s-%03d' % (cid.encode(), i) + b"x" * size + b'"' for i in range(n_frames)]
              for _, cid in phones}
    senders = [p.send_in_background(b"".join(build_frame(OP_TEXT, f) for f in frames[cid]), timeout=60)
               for p, cid in phones]
    wait_until(lambda: metric(relay, "pyrycode_relay_phone_pauses_total") >= 1, 5, what="the phones' pause")
    peak = 0
    for _ in range(10):  # 2 s of a paused relay: memory flat, the other pair unaffected
        round_trips(ob, op, ocid, 0.1)
        peak = max(peak, vm_rss_kib(pid) - rss0)
        time.sleep(0.1)
    assert any(t.is_alive() for t in senders), "the phones' sends all completed: nothing held them back"
    print(f"relay RSS grew by at most {peak} KiB while paused")
    assert peak < 32 * 1024, f"relay RSS grew by {peak} KiB while its phones were paused"
    # the binary reads again: everything arrives, in order per phone
    want = {cid: 0 for _, cid in phones}
    total = n_frames * len(phones)
    deadline = time.monotonic() + 60
    while total:
        assert time.monotonic() < deadline, f"{total} frames still missing"
        cid, frame = read_wrapped(b, timeout=10)
        assert frame == frames[cid][want[cid]], f"{cid}: frame {want[cid]} out of order or damaged"
        want[cid] += 1
        total -= 1
    for t in senders:
        t.join(10)
    barrier(b)
    for p, _ in phones:
        barrier(p)


# --------------------------------------------------------------------------------------
# oversized heads and messages, many at once


def test_oversized_heads_and_messages_many_at_once(relay_factory, server_id):
    """200 connections each send 64 KiB of request head that never ends, and 100
    WebSockets each send a message over 256 KiB, all at once: every head gets 431 and a
    close, every WebSocket 1009 and a close, the relay's memory stays bounded (a head is
    kept to 16 KiB, a message refused when its size is known), and a pair exchanging
    frames meanwhile is unaffected."""
    relay = relay_factory.start(args=["--rate-limit-burst", "0"], tls=False)
    pid = relay.proc.pid
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    wss = [relay.ws("/v1/server", server_headers(f"{server_id}-big{i}")) for i in range(100)]
    heads = [relay.connect() for _ in range(200)]
    rss0 = vm_rss_kib(pid)
    endless = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * (64 * 1024)
    big = build_frame(OP_TEXT, b"m" * (256 * 1024 + 1))
    threads = [c.send_in_background(endless, timeout=20) for c in heads]
    threads += [w.send_in_background(big, timeout=20) for w in wss]
    round_trips(b, p, cid, 1.0)
    for c in heads:
        r = c.read_http_response(timeout=10)
        assert r.status == 431, r
        c.wait_closed(10, allow_data=True)
    for w in wss:
        assert w.read_close(timeout=10)[0] == 1009
        w.send_quietly(build_frame(OP_CLOSE, b"\x03\xf1"))
        w.wait_closed(10, allow_data=True)
    for t in threads:
        t.join(10)
    grew = vm_rss_kib(pid) - rss0
    print(f"relay RSS grew by {grew} KiB")
    assert grew < 32 * 1024, f"relay RSS grew by {grew} KiB"
    round_trips(b, p, cid, 0.2)
    wait_healthz(relay, connected_binaries=1, connected_phones=1)


# --------------------------------------------------------------------------------------
# connection exhaustion


def test_connection_exhaustion_answers_503_and_recovers(relay_factory, server_id):
    """--max-connections 500 filled with 500 WebSockets: the next 100 upgrades get 503
    (plain /healthz is still served); 100 of the 500 leave and exactly 100 new ones get
    in; once all have left, the relay is back to empty and takes a new pair."""
    cap = 500
    relay = relay_factory.start(args=["--max-connections", str(cap), "--max-connections-per-ip", "0",
                                      "--rate-limit-burst", "0"], tls=False)

    def upgrade_many(n, tag):
        conns = [relay.connect() for _ in range(n)]
        for i, c in enumerate(conns):
            c.send(build_upgrade("/v1/server", server_headers(f"{server_id}-{tag}{i}")))
        return conns, [c.read_http_response(timeout=10).status for c in conns]

    held, st = upgrade_many(cap, "a")
    assert st == [101] * cap, sorted(set(st))
    wait_healthz(relay, connected_binaries=cap, timeout=10)
    over, st = upgrade_many(100, "b")
    assert st == [503] * 100, sorted(set(st))
    assert relay.http("GET", "/healthz").status == 200
    for c in held[:100]:
        c.close()  # FIN without a close frame: the relay ends them (1006 for the binary)
    wait_healthz(relay, connected_binaries=cap - 100, timeout=10)
    again, st = upgrade_many(101, "c")
    assert sorted(st) == [101] * 100 + [503], sorted(set(st))
    for c in held[100:] + again:
        c.close()
    wait_healthz(relay, connected_binaries=0, timeout=10)
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    round_trips(b, p, cid, 0.1)


# --------------------------------------------------------------------------------------
# descriptor exhaustion


def test_fd_exhaustion_degrades_with_a_log_line_and_recovers(relay_factory, server_id):
    """RLIMIT_NOFILE 128 for the whole relay (it warns at start-up, naming the limit to
    raise): 200 clients connect and ask for /healthz. The relay answers as many as it
    has descriptors for; accept fails with EMFILE for the rest, which wait in the listen
    backlog (not refused, not dropped), and each worker logs `accept failed` with the
    error once for the episode, not once per attempt or back-off, and `accept recovered`
    when it accepts again. Once the first clients leave, the waiting ones are accepted
    and answered, and the relay is back to normal."""
    relay = relay_factory.start(args=["--rate-limit-burst", "0"], tls=False, wrapper=["prlimit", "--nofile=128:128"])
    mark = relay.log_mark()
    t0 = time.monotonic()
    conns = [RawConn(relay.host, relay.port) for _ in range(200)]  # not the relay's helper: we close them early
    req = build_request("GET", "/healthz")
    for c in conns:
        c.send(req)
    time.sleep(1.5)  # what the relay has descriptors for is answered by then
    answered, waiting = [], []
    for c in conns:
        try:
            r = c.read_http_response(timeout=0.01)
            assert r.status == 200, r
            answered.append(c)
        except TimeoutError:
            waiting.append(c)
    assert 50 <= len(answered) < 128 and waiting, f"{len(answered)} answered, {len(waiting)} waiting"
    rec = relay.wait_log("accept failed", since=mark, timeout=3)
    assert rec["level"] == "WARN" and rec["err"] == "Too many open files", rec
    # what to change was said at start-up (the limit is far below what --max-connections needs)
    boot = relay.find_logs("file descriptor limit below --max-connections")
    assert boot and boot[0]["value"] == "128" and "LimitNOFILE=" in boot[0]["fix"], boot
    time.sleep(1.0)  # the back-offs keep failing while nothing is freed: logged, but bounded
    took = time.monotonic() - t0
    n_logged = len(relay.find_logs("accept failed", since=mark))
    print(f"{len(answered)} answered at once, {len(waiting)} waited; {n_logged} accept failures logged in {took:.1f} s")
    # once per episode per worker: not once per 100 ms back-off
    workers = int(os.environ.get("RELAY_WORKERS", "1"))
    assert 1 <= n_logged <= workers, f"{n_logged} accept failures logged in {took:.1f} s"
    for c in answered:
        c.close()
    for c in waiting:
        r = c.read_http_response(timeout=5)
        assert r.status == 200, r
    for c in waiting:
        c.close()
    # each worker whose accepts failed says so once per episode, and says when they work again
    assert relay.wait_log("accept recovered", since=mark, timeout=3) is not None
    assert len(relay.find_logs("accept failed", since=mark)) <= len(relay.find_logs("accept recovered", since=mark))
    # the relay is whole again: WebSockets work
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    round_trips(b, p, cid, 0.1)


# --------------------------------------------------------------------------------------
# the provided-buffer ring exhausted at its ceiling


RECV_BUFFERS = 'pyrycode_relay_worker_recv_buffers{worker="0"}'
RECV_EXHAUSTED = 'pyrycode_relay_worker_recv_buffer_exhausted_total{worker="0"}'


def test_exhausted_receive_ring_at_its_ceiling_recovers(relay_factory, server_id):
    """One worker; 2,500 connections send a request each while the relay is stopped:
    when it resumes, more receives find data at once than the ring holds buffers, even
    after it has grown to its 1,024-buffer ceiling. Receives that found it empty
    (-ENOBUFS) are re-armed once buffers come back: every request is answered. A second
    such burst (2,500 new connections) exhausts the full-size ring again, and again
    everything is answered."""
    relay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "0", "--workers", "1"], tls=False)
    pid = relay.proc.pid
    req = build_request("GET", "/healthz")
    socks = []

    def burst() -> None:
        for k in socks:
            k.close()
        socks.clear()
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(2500):  # the kernel completes the handshakes into the listen backlog
                k = socket.create_connection((relay.host, relay.port), timeout=10)
                socks.append(k)
                k.sendall(req)
        finally:
            os.kill(pid, signal.SIGCONT)
        for k in socks:
            head = b""
            while b"\r\n\r\n" not in head or not head.endswith(b"}"):
                chunk = k.recv(4096)
                assert chunk, "closed before answering"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200 "), head[:100]

    def scrape():
        out = {}
        for line in relay.metrics_text().splitlines():
            if line.startswith((RECV_BUFFERS, RECV_EXHAUSTED)):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    try:
        burst()
        s1 = scrape()
        assert s1[RECV_BUFFERS] == 1024 and s1[RECV_EXHAUSTED] > 0, s1
        burst()
        s2 = scrape()
        assert s2[RECV_BUFFERS] == 1024 and s2[RECV_EXHAUSTED] > s1[RECV_EXHAUSTED], (s1, s2)
    finally:
        for k in socks:
            k.close()
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    round_trips(b, p, cid, 0.1)


# --------------------------------------------------------------------------------------
# a message begun and never finished (§5.3)


def test_a_message_begun_and_never_finished_is_cut_at_30_s(relay_factory, server_id):
    """§5.3: a WebSocket message must arrive whole within 30 s of its first header. One
    phone sends the first fragment of a text message (FIN=0) and nothing more; another
    sends a frame header announcing 100 bytes and only 10 of them. Both are torn down
    without a close frame between 30 and 33 s after they began, while a pair that keeps
    its messages whole is served throughout and afterwards. The
    heartbeat is pushed out of the way (120 s) so only the message deadline can act."""
    relay = relay_factory.start(args=["--heartbeat-interval", "120s", "--rate-limit-burst", "0"], tls=False)
    b = claim(relay, server_id)
    p1, _ = register(relay, server_id)
    p2, _ = register(relay, server_id)
    live = unique_id("whole")
    b3 = claim(relay, live)
    p3, cid3 = register(relay, live)
    t0 = time.monotonic()
    p1.send(build_frame(OP_TEXT, b'{"begun":', fin=False))
    whole = build_frame(OP_TEXT, b"x" * 100)
    p2.send(whole[:len(whole) - 90])
    # the third phone talks all along: its messages are whole, the deadline never applies
    round_trips(b3, p3, cid3, 27.0)
    for p in (p1, p2):
        try:
            extra = p.read_exact(1, timeout=max(0.1, t0 + 36 - time.monotonic()))
            raise AssertionError(f"the relay sent {extra!r}: a cut connection gets no frame")
        except ConnClosed:
            pass
        took = time.monotonic() - t0
        assert 29.5 <= took <= 33.5, f"cut after {took:.1f} s"
        assert not p.buf, bytes(p.buf)
    round_trips(b3, p3, cid3, 0.5)
