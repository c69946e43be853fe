"""Several workers: a server-id's connections are handed to the worker that owns it.

Each worker accepts on its own SO_REUSEPORT socket, so which worker accepts a
connection is the kernel's choice. These tests make the handoff certain instead of
likely: a connection first asks for /healthz, the per-worker accept counter shows which
worker took it, and only a connection on a worker other than the server-id's owner is
upgraded (on the same kept-alive connection). The owner is learnt the same way, from
the per-worker handoff counters when the binary claims.
"""

import json
import re

from relayctl import (HEARTBEAT, RECLAIMED, OP_TEXT, build_frame, build_upgrade, check_101, client_headers,
                      expect_close, read_text, read_wrapped, route, server_headers, wait_until, ws_key)

WORKERS = 4
ACCEPTS = "pyrycode_relay_worker_accepts_total"
SENT = "pyrycode_relay_worker_handoffs_sent_total"
RECEIVED = "pyrycode_relay_worker_handoffs_received_total"
FAILURES = "pyrycode_relay_handoff_failures_total"
# a connection lands on a given worker with probability 3/4 per try when 4 listen
PLACEMENT_TRIES = 40

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$')


def per_worker(relay, family: str) -> dict:
    """{worker index: value} of a per-worker series; {label value: value} otherwise."""
    out = {}
    for line in relay.metrics_text().splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != family:
            continue
        labels = dict(kv.split("=", 1) for kv in m.group(2).split(",")) if m.group(2) else {}
        key = labels.get("worker", labels.get("reason", '""')).strip('"')
        out[int(key) if key.isdigit() else key] = float(m.group(3))
    return out


def start(relay_factory, *extra):
    return relay_factory.start(metrics=True, args=["--workers", str(WORKERS), "--rate-limit-burst", "0", *extra])


def accepted_on(relay, conn_factory):
    """(connection, worker that accepted it): exactly one worker's accept count moves."""
    before = per_worker(relay, ACCEPTS)
    conn = conn_factory()
    after = per_worker(relay, ACCEPTS)
    moved = [w for w in after if after[w] != before.get(w, 0)]
    assert len(moved) == 1 and after[moved[0]] - before.get(moved[0], 0) == 1, (before, after)
    return conn, moved[0]


def connection_on_worker_other_than(relay, owner: int):
    """A kept-alive connection accepted by a worker that is not `owner`."""
    for _ in range(PLACEMENT_TRIES):
        def probe():
            c = relay.connect()
            r = c.request("GET", "/healthz")  # answered and kept alive: the worker is known
            assert r.status == 200 and r.header("Connection") != "close", r
            return c
        c, w = accepted_on(relay, probe)
        if w != owner:
            return c, w
        c.close()
    raise AssertionError(f"no connection landed outside worker {owner} in {PLACEMENT_TRIES} tries")


def upgrade(conn, path: str, headers: dict, early: bytes = b""):
    """Upgrade a kept-alive connection; `early` frames go in the same write as the request."""
    key = ws_key()
    conn.send(build_upgrade(path, headers, key) + early)
    resp = conn.read_http_response()
    assert resp.status == 101, resp
    check_101(resp, key)
    return conn


def claim_and_find_owner(relay, server_id: str):
    """A binary holding server_id, and the worker that owns the id."""
    sent, received = per_worker(relay, SENT), per_worker(relay, RECEIVED)
    mark = relay.log_mark()
    binary, accepted = accepted_on(relay, lambda: relay.ws_server(server_id))
    relay.wait_log("server_claimed", since=mark, server_id=server_id)
    sent2, received2 = per_worker(relay, SENT), per_worker(relay, RECEIVED)
    if sent2 == sent:
        return binary, accepted  # the accepting worker owns the id
    assert sent2[accepted] == sent[accepted] + 1
    owner = [w for w in received2 if received2[w] != received[w]]
    assert len(owner) == 1 and owner[0] != accepted
    return binary, owner[0]


def handed_off_phone(relay, server_id: str, owner: int, early: bytes = b""):
    """A phone accepted by a non-owner worker and handed to the owner: (conn, conn_id)."""
    conn, w = connection_on_worker_other_than(relay, owner)
    sent, received = per_worker(relay, SENT), per_worker(relay, RECEIVED)
    mark = relay.log_mark()
    upgrade(conn, "/v1/client", client_headers(server_id), early)
    rec = relay.wait_log("phone_registered", since=mark, server_id=server_id)
    wait_until(lambda: per_worker(relay, RECEIVED)[owner] == received[owner] + 1, 5, what="handoff received")
    assert per_worker(relay, SENT)[w] == sent[w] + 1
    return conn, rec["conn_id"]


def no_handoff_failures(relay):
    assert all(v == 0 for v in per_worker(relay, FAILURES).values()), per_worker(relay, FAILURES)


def test_frames_routed_byte_exact_both_ways_across_workers(relay_factory, server_id):
    relay = start(relay_factory)
    binary, owner = claim_and_find_owner(relay, server_id)
    phones = [handed_off_phone(relay, server_id, owner) for _ in range(3)]
    handoffs = sum(per_worker(relay, SENT).values())

    # phone -> binary: each phone's frames arrive wrapped, byte-exact, in its own order
    frames = 40
    for k in range(frames):
        for i, (p, _) in enumerate(phones):
            p.send_frame(OP_TEXT, json.dumps({"phone": i, "seq": k, "pad": "x" * (k * 37 % 300)}).encode())
    got = {cid: [] for _, cid in phones}
    for _ in range(frames * len(phones)):
        cid, raw = read_wrapped(binary)
        got[cid].append(raw)
    for i, (_, cid) in enumerate(phones):
        want = [json.dumps({"phone": i, "seq": k, "pad": "x" * (k * 37 % 300)}).encode() for k in range(frames)]
        assert got[cid] == want

    # binary -> phone: routed frames reach exactly their phone, verbatim and in order
    for k in range(frames):
        for i, (_, cid) in enumerate(phones):
            route(binary, cid, b'{"to":%d, "seq":%d}' % (i, k))
    for i, (p, _) in enumerate(phones):
        assert [read_text(p) for _ in range(frames)] == [b'{"to":%d, "seq":%d}' % (i, k) for k in range(frames)]

    # frames never cross workers: not one cross-worker message was added by them
    assert sum(per_worker(relay, SENT).values()) == handoffs
    assert sum(per_worker(relay, RECEIVED).values()) == handoffs
    no_handoff_failures(relay)
    assert relay.healthz()["connected_phones"] == 3


def test_frames_sent_with_the_upgrade_request_travel_with_the_handoff(relay_factory, server_id):
    """Frames written in the same segment as the upgrade request, before the 101, reach
    the binary first and in order although the connection changed worker."""
    relay = start(relay_factory)
    binary, owner = claim_and_find_owner(relay, server_id)
    for i in range(3):
        early = b"".join(build_frame(OP_TEXT, b'{"early":%d,"n":%d}' % (i, n)) for n in range(3))
        phone, cid = handed_off_phone(relay, server_id, owner, early)
        for n in range(3):
            assert read_wrapped(binary) == (cid, b'{"early":%d,"n":%d}' % (i, n))
        phone.send_frame(OP_TEXT, b'{"after":%d}' % i)
        assert read_wrapped(binary) == (cid, b'{"after":%d}' % i)
    no_handoff_failures(relay)


def test_grace_reclaim_and_takeover_across_workers(relay_factory, server_id):
    relay = start(relay_factory, "--grace-period", "10s", "--conflict-probe-timeout", "1s")
    first, owner = claim_and_find_owner(relay, server_id)
    phone, _ = handed_off_phone(relay, server_id, owner)

    # grace, then a reclaim by a binary accepted on another worker: the phones of the
    # old binary are evicted (§4.2), the new binary serves new phones
    mark = relay.log_mark()
    first.send_close(1000)
    relay.wait_log("server_released", since=mark, server_id=server_id)
    conn, _ = connection_on_worker_other_than(relay, owner)
    second = upgrade(conn, "/v1/server", server_headers(server_id))
    relay.wait_log("server_claimed", since=mark, server_id=server_id)
    expect_close(phone, RECLAIMED)
    phone2, cid2 = handed_off_phone(relay, server_id, owner)
    phone2.send_frame(OP_TEXT, b'{"after":"reclaim"}')
    assert read_wrapped(second) == (cid2, b'{"after":"reclaim"}')
    assert not relay.find_logs("server_id_conflict", since=mark)

    # takeover: `second` stops answering pings; a claimant from another worker probes it
    # on the owner and takes the id after the probe timeout
    mark = relay.log_mark()
    conn, _ = connection_on_worker_other_than(relay, owner)
    third = upgrade(conn, "/v1/server", server_headers(server_id))
    relay.wait_log("server_id_takeover", since=mark, timeout=5, server_id=server_id)
    got = second.read_close(timeout=6)
    assert got == HEARTBEAT, got
    expect_close(phone2, RECLAIMED)
    phone3, cid3 = handed_off_phone(relay, server_id, owner)
    route(third, cid3, b'{"after":"takeover"}')
    assert read_text(phone3) == b'{"after":"takeover"}'
    no_handoff_failures(relay)
    assert relay.healthz()["connected_binaries"] == 1


def test_cap_and_rate_limit_hold_across_workers(relay_factory, server_id):
    """--max-connections and the per-IP limiter count every worker's connections."""
    relay = relay_factory.start(metrics=True, args=["--workers", str(WORKERS), "--max-connections", "3",
                                                    "--rate-limit-burst", "0"])
    binary, owner = claim_and_find_owner(relay, server_id)
    held = [handed_off_phone(relay, server_id, owner) for _ in range(2)]
    conn, _ = connection_on_worker_other_than(relay, owner)
    r = conn.upgrade("/v1/client", client_headers(server_id), expect=503)
    assert r.status == 503
    held[0][0].send_close(1000)
    # the slot comes back once the phone's WebSocket ended, on whichever worker asks
    def admitted():
        c = relay.connect()
        resp = c.upgrade("/v1/client", client_headers(server_id), expect=None)
        c.close()
        return resp.status == 101
    wait_until(admitted, 5, what="a slot freed by another worker's phone")

    limited = relay_factory.start(args=["--workers", str(WORKERS), "--rate-limit-burst", "5",
                                        "--rate-limit-refill", "1h"])
    statuses = []
    for i in range(8):  # spread over the workers by the kernel: one bucket for them all
        c = limited.connect()
        statuses.append(c.upgrade("/v1/server", server_headers(f"{server_id}-rl{i}"), expect=None).status)
        c.close()
    assert statuses == [101] * 5 + [429] * 3, statuses
