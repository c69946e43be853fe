"""Registry end to end (reference §2.2 claim/probe/takeover, §2.3 register, §4.2-§4.6
grace, reclaim, eviction; close codes of §2.4, §8.1)."""

import threading
import time

import pytest

from relayctl import (AT_CAP, CONFLICT, HEARTBEAT, LOCAL_IP, NO_SERVER, OP_CLOSE, OP_PING, OP_PONG, RECLAIMED, abort,
                      barrier, build_frame, build_upgrade, claim, client_headers, close_and_wait, close_payload,
                      expect_close, expect_nothing, read_notice, read_text, read_wrapped, register, route,
                      server_headers, wait_healthz)


def _claim_in_background(relay, server_id, timeout=8.0):
    """Upgrade a second /v1/server for server_id in a thread and read what follows the
    101 (a close frame, or nothing if the claim succeeded)."""
    out = {}

    def run():
        try:
            c = relay.ws_server(server_id)
            out["conn"] = c
            out["close"] = c.read_close(timeout)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# --------------------------------------------------------------------------------------
# claims


def test_live_incumbent_keeps_id_second_claim_4409(relay_factory, server_id):
    relay = relay_factory.start(args=["--conflict-probe-timeout", "3s"])
    inc = claim(relay, server_id)
    phone, cid = register(relay, server_id)
    mark = relay.log_mark()
    t, out = _claim_in_background(relay, server_id)
    # the relay probes the incumbent with a ping; a live incumbent answers it
    f = inc.read_frame(timeout=5)
    assert f.opcode == OP_PING, f"expected the conflict probe ping on the incumbent, got {f!r}"
    inc.send_frame(OP_PONG, f.payload)
    t.join(8)
    assert "error" not in out, out.get("error")
    assert out.get("close") == CONFLICT, out
    out["conn"].send_quietly(build_frame(OP_CLOSE, close_payload(4409)))
    out["conn"].wait_closed(6, allow_data=True)
    rec = relay.wait_log("server_id_conflict", since=mark, server_id=server_id)
    assert rec["remote"] == LOCAL_IP and "binary_version" not in rec
    assert not relay.find_logs("server_id_takeover", since=mark)
    assert not relay.find_logs("server_claimed", since=mark)
    # the incumbent and its phone are untouched
    phone.send_json({"still": "mine"})
    assert read_wrapped(inc) == (cid, b'{"still":"mine"}')
    route(inc, cid, b"1")
    assert read_text(phone) == b"1"
    assert relay.healthz()["connected_binaries"] == 1


def test_live_python_websockets_incumbent_answers_probe_keeps_id(relay, server_id, pyws):
    """A real client library answers the probe ping by itself, at once: the second claim
    gets 4409 long before the default 10 s probe timeout."""
    inc = pyws(relay, "/v1/server", server_headers(server_id))
    relay.wait_log("server_claimed", server_id=server_id)
    mark = relay.log_mark()
    t0 = time.monotonic()
    second = relay.ws_server(server_id)
    expect_close(second, CONFLICT)
    elapsed = time.monotonic() - t0
    assert elapsed < 4, f"conflict answer took {elapsed:.1f}s for a live incumbent"
    rec = relay.wait_log("server_id_conflict", since=mark, server_id=server_id)
    assert rec["remote"] == LOCAL_IP and "binary_version" not in rec, rec
    assert not relay.find_logs("server_id_takeover", since=mark)
    assert not relay.find_logs("server_claimed", since=mark), "second claim logged server_claimed"
    # the incumbent still owns the id
    inc.ping()
    assert inc.is_open()
    phone, cid = register(relay, server_id)
    phone.send_json({"tag": "via-incumbent"})
    env = inc.recv_json(5)
    assert env == {"conn_id": cid, "frame": {"tag": "via-incumbent"}}, env
    assert relay.healthz()["connected_binaries"] == 1


def test_dead_incumbent_taken_over_after_probe(relay_factory, server_id):
    relay = relay_factory.start(args=["--conflict-probe-timeout", "1s", "--rate-limit-burst", "0"])
    inc = claim(relay, server_id, **{"X-Pyrycode-Version": "incumbent-1.0"})  # never reads nor answers pings
    old = [register(relay, server_id) for _ in range(2)]
    old_cids = [cid for _, cid in old]
    mark = relay.log_mark()
    t0 = time.monotonic()
    new = relay.ws_server(server_id, **{"X-Pyrycode-Version": "claimant 2.0 (takeover)"})
    rec = relay.wait_log("server_id_takeover", since=mark, timeout=5, server_id=server_id)
    took = time.monotonic() - t0
    assert 0.8 <= took <= 3.5, f"takeover after {took:.2f}s with a 1s probe timeout"
    assert rec["remote"] == LOCAL_IP and "binary_version" not in rec
    # §2.2 step 5: the claimant's own version, not the incumbent's, not empty
    claimed = relay.wait_log("server_claimed", since=mark, server_id=server_id)
    assert claimed["binary_version"] == "claimant 2.0 (takeover)" and claimed["remote"] == LOCAL_IP, claimed
    assert not relay.find_logs("server_id_conflict", since=mark)
    # the old phones are evicted
    for p, _ in old:
        expect_close(p, RECLAIMED)
    # the displaced incumbent is closed with 1011 heartbeat timeout (§2.2)
    got = inc.read_close(timeout=6)
    assert got == HEARTBEAT, f"incumbent got close {got!r}, expected {HEARTBEAT!r}"
    # the new binary owns the id: not closed, gets new phones, no notice for evicted ones
    barrier(new)
    phone, cid = register(relay, server_id)
    assert cid not in old_cids
    phone.send_json({"hello": "new"})
    assert read_wrapped(new) == (cid, b'{"hello":"new"}')
    route(new, cid, b'{"ok":1}')
    assert read_text(phone) == b'{"ok":1}'
    old_cid = old_cids[0]
    route(new, old_cid, b"1")  # the evicted phone is gone from the registry
    relay.wait_log("binary_forwarder_unknown_conn_id", since=mark, conn_id=old_cid)
    expect_nothing(new, 0.2)
    assert wait_healthz(relay, connected_binaries=1, connected_phones=1)


def test_takeover_logs_a_long_version_as_a_plain_claim_does(relay_factory, server_id):
    """The claimant's version is kept (bounded) while it waits; a version past the log's
    value limit comes out cut exactly as on an uncontested claim."""
    relay = relay_factory.start(args=["--conflict-probe-timeout", "300ms", "--rate-limit-burst", "0"])
    version = "v" * 700 + " tail"
    mark = relay.log_mark()
    claim(relay, server_id + "-plain", **{"X-Pyrycode-Version": version})
    plain = relay.wait_log("server_claimed", since=mark, server_id=server_id + "-plain")["binary_version"]
    assert plain.startswith("vvv") and len(plain) < len(version)
    claim(relay, server_id)  # the incumbent never answers the probe
    mark = relay.log_mark()
    relay.ws_server(server_id, **{"X-Pyrycode-Version": version})
    relay.wait_log("server_id_takeover", since=mark, timeout=5, server_id=server_id)
    assert relay.wait_log("server_claimed", since=mark, server_id=server_id)["binary_version"] == plain


# --------------------------------------------------------------------------------------
# registering phones


def test_phone_for_unknown_server_id_4404(relay, server_id):
    mark = relay.log_mark()
    p = relay.ws_client(server_id)
    expect_close(p, NO_SERVER)
    rec = relay.wait_log("phone_register_no_server", since=mark, server_id=server_id)
    assert rec["remote"] == LOCAL_IP
    assert not relay.find_logs("phone_registered", since=mark)
    assert relay.healthz()["connected_phones"] == 0


def test_phone_for_released_server_id_4404(relay_factory, server_id):
    relay = relay_factory.start(args=["--grace-period", "0s"])
    b = claim(relay, server_id)
    close_and_wait(b)
    relay.wait_log("server_released", server_id=server_id)
    wait_healthz(relay, connected_binaries=0)
    time.sleep(0.1)
    expect_close(relay.ws_client(server_id), NO_SERVER)


def test_seventeenth_phone_4429_then_slot_frees(relay_factory, server_id):
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    b = claim(relay, server_id)
    phones = [register(relay, server_id) for _ in range(16)]
    assert relay.healthz()["connected_phones"] == 16
    mark = relay.log_mark()
    extra = relay.ws_client(server_id)
    expect_close(extra, AT_CAP)
    rec = relay.wait_log("phone_register_at_cap", since=mark, server_id=server_id)
    assert rec["remote"] == LOCAL_IP
    # the 16 are untouched
    for p, _ in phones[:3]:
        barrier(p)
    # another server-id is not affected by this one's cap
    other = claim(relay, server_id + "-b")
    register(relay, server_id + "-b")
    # one leaves: a new phone fits again
    p0, cid0 = phones[0]
    close_and_wait(p0)
    assert read_notice(b) == (cid0, 1000)
    wait_healthz(relay, connected_phones=16)
    p17, cid17 = register(relay, server_id)
    p17.send_json({"n": 17})
    assert read_wrapped(b) == (cid17, b'{"n":17}')
    wait_healthz(relay, connected_binaries=2, connected_phones=17)
    expect_close(relay.ws_client(server_id), AT_CAP)
    barrier(other)


def test_concurrent_registrations_never_exceed_cap(relay_factory, server_id):
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    claim(relay, server_id)
    conns = [relay.connect() for _ in range(24)]
    for c in conns:
        c.send(build_upgrade("/v1/client", client_headers(server_id)))
    accepted = rejected = 0
    for c in conns:
        assert c.read_http_response().status == 101
    time.sleep(0.5)  # every 4429 close frame is sent right after its 101
    for c in conns:
        if c.is_open(0.01) and not c.buf:
            accepted += 1
        else:
            assert c.read_close() == AT_CAP
            rejected += 1
    assert (accepted, rejected) == (16, 8)
    assert relay.healthz()["connected_phones"] == 16


# --------------------------------------------------------------------------------------
# binary disconnect: grace, expiry, reclaim


@pytest.mark.parametrize("how", ["close", "rst", "fin"])
def test_grace_keeps_phones_then_expiry_closes_1000(relay_factory, server_id, how):
    """Whether the binary leaves with a close handshake, a reset or a bare FIN, its
    phones stay for the grace period, then get 1000."""
    relay = relay_factory.start(args=["--grace-period", "1s"])
    b = claim(relay, server_id)
    p1, _ = register(relay, server_id)
    p2, _ = register(relay, server_id)
    assert relay.healthz()["connected_binaries"] == 1
    mark = relay.log_mark()
    t0 = time.monotonic()
    if how == "close":
        close_and_wait(b)
    elif how == "rst":
        abort(b)
    else:
        b.close()  # nothing unread: the kernel sends FIN, no close frame
    relay.wait_log("server_released", since=mark, timeout=2, server_id=server_id)
    # a gracing binary is not counted; its phones are
    h = wait_healthz(relay, timeout=0.5, connected_binaries=0)
    assert h["connected_phones"] == 2, h
    # phones stay connected (and are sent nothing) during grace, and new phones may still register
    barrier(p1)
    barrier(p2)
    p3, _ = register(relay, server_id)
    assert relay.healthz()["connected_phones"] == 3
    for p in (p1, p2, p3):
        code = p.read_close(timeout=4)
        assert code == (1000, b""), f"grace expiry close {code!r}, expected (1000, b'')"
    took = time.monotonic() - t0
    assert 0.8 <= took <= 3.5, f"grace expiry after {took:.2f}s with --grace-period 1s"
    for p in (p1, p2, p3):
        p.send_quietly(build_frame(OP_CLOSE, close_payload(1000)))
        p.wait_closed(6, allow_data=True)
    wait_healthz(relay, connected_binaries=0, connected_phones=0)
    # the id is free again: a phone gets 4404, a binary claims it without conflict
    expect_close(relay.ws_client(server_id), NO_SERVER)
    mark = relay.log_mark()
    claim(relay, server_id)
    assert not relay.find_logs("server_id_conflict", since=mark)


def test_reclaim_within_grace_evicts_phones_4404(relay_factory, server_id):
    relay = relay_factory.start(args=["--grace-period", "3s"])
    b = claim(relay, server_id)
    old = [register(relay, server_id) for _ in range(3)]
    mark = relay.log_mark()
    abort(b)
    relay.wait_log("server_released", since=mark, timeout=2, server_id=server_id)
    wait_healthz(relay, timeout=1, connected_binaries=0, connected_phones=3)
    t0 = time.monotonic()
    b2 = claim(relay, server_id)
    assert not relay.find_logs("server_id_conflict", since=mark)
    assert not relay.find_logs("server_id_takeover", since=mark)
    for p, _ in old:
        expect_close(p, RECLAIMED)
    assert time.monotonic() - t0 < 2.0, "reclaim must evict at once, not at grace expiry"
    # no close notices to the new binary for the evicted phones
    expect_nothing(b2, 0.3)
    wait_healthz(relay, connected_binaries=1, connected_phones=0)
    # re-dialled phones reach the new binary
    p3, cid3 = register(relay, server_id)
    assert cid3 not in [cid for _, cid in old]
    p3.send_json({"again": True})
    assert read_wrapped(b2) == (cid3, b'{"again":true}')
    # the old grace timer must not fire later and evict the new binary's phones
    time.sleep(max(0.0, 3.5 - (time.monotonic() - t0)))
    barrier(p3)
    barrier(b2)
    assert relay.healthz()["connected_binaries"] == 1
    route(b2, cid3, b'"alive"')
    assert read_text(p3) == b'"alive"'


def test_phone_sending_during_grace_is_disconnected(relay_factory, server_id):
    relay = relay_factory.start(args=["--grace-period", "5s"])
    b = claim(relay, server_id)
    talker, tcid = register(relay, server_id)
    silent, _ = register(relay, server_id)
    mark = relay.log_mark()
    abort(b)
    relay.wait_log("server_released", since=mark, timeout=2, server_id=server_id)
    talker.send_json({"anyone": "there?"})
    code = talker.read_close(timeout=4)
    assert code == (1000, b""), f"phone sending during grace got {code!r}, expected (1000, b'')"
    talker.send_quietly(build_frame(OP_CLOSE, close_payload(1000)))
    talker.wait_closed(6, allow_data=True)
    relay.wait_log("phone_unregistered", since=mark, conn_id=tcid)
    barrier(silent)
    wait_healthz(relay, connected_phones=1)


def test_phone_of_reclaiming_binary_notifies_it(relay_factory, server_id):
    """After a reclaim, phones registered with the new binary notify the new binary."""
    relay = relay_factory.start(args=["--grace-period", "5s"])
    b1 = claim(relay, server_id)
    abort(b1)
    relay.wait_log("server_released", server_id=server_id)
    b2 = claim(relay, server_id)
    p, cid = register(relay, server_id)
    close_and_wait(p, 4003)
    assert read_notice(b2) == (cid, 4003)
