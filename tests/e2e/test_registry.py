"""Registry semantics: claim conflicts and the liveness-probe takeover, phone
registration refusals, the per-server-id phone cap, and the binary's grace period
(reference §2.2, §2.3, §4.2-§4.5, §8.1)."""

import time

from relayctl import server_headers
from relayhelp import (claim, expect_close, hello, pyws, quiet_for, read_env, read_text, register,  # noqa: F401
                       routed, wait_healthz)


# --- conflicts and takeover

def test_live_incumbent_keeps_id_second_claim_4409(relay, server_id, pyws):
    incumbent = pyws(relay, "/v1/server", server_headers(server_id))
    relay.wait_log("server_claimed", server_id=server_id)
    mark = relay.log_mark()
    t0 = time.monotonic()
    second = relay.ws_server(server_id)
    expect_close(second, 4409, b"server-id already claimed")
    elapsed = time.monotonic() - t0
    rec = relay.wait_log("server_id_conflict", since=mark, server_id=server_id)
    assert rec.get("remote") == "127.0.0.1", rec
    assert "binary_version" not in rec, rec
    assert elapsed < 4, f"conflict answer took {elapsed:.1f}s for a live incumbent"
    assert not relay.find_logs("server_id_takeover", since=mark)
    assert not relay.find_logs("server_claimed", since=mark), "second claim logged server_claimed"
    # the incumbent still owns the id
    assert incumbent.is_open()
    phone, _ = _phone_to_pyws(relay, incumbent, server_id)
    assert relay.healthz()["connected_binaries"] == 1


def _phone_to_pyws(relay, binary_pyws, server_id, tag="via-incumbent"):
    phone = register(relay, server_id)
    phone.send_json({"tag": tag})
    env = binary_pyws.recv_json(5)
    assert env["frame"] == {"tag": tag}, env
    return phone, env["conn_id"]


def test_dead_incumbent_taken_over_after_probe(relay_factory, server_id):
    relay = relay_factory.start(args=["--conflict-probe-timeout", "1s"])
    dead = claim(relay, server_id)  # a raw connection that never reads: never answers the probe ping
    old_phones = [register(relay, server_id) for _ in range(2)]
    mark = relay.log_mark()
    t0 = time.monotonic()
    new = relay.ws_server(server_id)
    rec = relay.wait_log("server_id_takeover", since=mark, timeout=5, server_id=server_id)
    took = time.monotonic() - t0
    assert rec.get("remote") == "127.0.0.1", rec
    assert "binary_version" not in rec, rec
    assert 0.7 <= took <= 3.5, f"takeover after {took:.1f}s with a 1 s probe timeout"
    for p in old_phones:
        expect_close(p, 4404, b"binary reclaimed server-id")
    # the displaced incumbent is closed with 1011 heartbeat timeout (§2.2)
    code, reason = dead.read_close(timeout=5)
    assert (code, reason) == (1011, b"heartbeat timeout"), (code, reason)
    # the new binary owns the id; no close notices for the evicted phones reach it
    p, cid = hello(relay, new, server_id, "new-owner")
    new.send_text(routed(cid, '{"ok":1}'))
    assert read_text(p) == b'{"ok":1}'
    wait_healthz(relay, connected_binaries=1, connected_phones=1)


def test_phone_for_unknown_server_id_4404(relay, server_id):
    mark = relay.log_mark()
    phone = relay.ws_client(server_id)
    expect_close(phone, 4404, b"no server with that id")
    rec = relay.wait_log("phone_register_no_server", since=mark, server_id=server_id)
    assert rec.get("remote") == "127.0.0.1", rec
    assert not relay.find_logs("phone_registered", since=mark)
    assert relay.healthz()["connected_phones"] == 0


def test_seventeenth_phone_4429_then_slot_frees(relay_factory, server_id):
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    binary = claim(relay, server_id)
    phones = [register(relay, server_id) for _ in range(16)]
    wait_healthz(relay, connected_phones=16)
    mark = relay.log_mark()
    extra = relay.ws_client(server_id)
    expect_close(extra, 4429, b"too many phones for server-id")
    relay.wait_log("phone_register_at_cap", since=mark, server_id=server_id)
    # another server-id is not affected by this one's cap
    other = server_id + "-b"
    b2 = claim(relay, other)
    register(relay, other)
    # one phone leaves -> a new one fits
    phones[0].send_close(1000)
    phones[0].read_close()
    assert read_env(binary)["close_code"] == 1000  # its close notice
    wait_healthz(relay, connected_phones=16)
    hello(relay, binary, server_id, "replacement-fits")
    wait_healthz(relay, connected_binaries=2, connected_phones=17)
    assert b2.is_open(0.05)


# --- grace period

def test_grace_keeps_phones_then_expiry_closes_1000(relay_factory, server_id):
    relay = relay_factory.start(args=["--grace-period", "2s"])
    binary = claim(relay, server_id)
    phones = [register(relay, server_id) for _ in range(2)]
    wait_healthz(relay, connected_binaries=1, connected_phones=2)
    mark = relay.log_mark()
    binary.send_close(1000)
    binary.read_close()
    binary.wait_closed(7, allow_data=True)
    t_gone = time.monotonic()
    relay.wait_log("server_released", since=mark, server_id=server_id)
    h = wait_healthz(relay, timeout=0.5, connected_binaries=0)
    assert h["connected_phones"] == 2, h
    for p in phones:
        assert quiet_for(p, 0.1) == b"", "phone got something when its binary left"
    # a phone may still register during grace
    late = register(relay, server_id)
    wait_healthz(relay, timeout=0.5, connected_binaries=0, connected_phones=3)
    assert time.monotonic() - t_gone < 1.5, "test too slow to observe the grace window"
    for p in phones + [late]:
        expect_close(p, 1000, b"", timeout=4)
    expired_at = time.monotonic() - t_gone
    assert 1.5 <= expired_at <= 4.5, f"phones closed {expired_at:.1f}s after the binary left (grace 2s)"
    wait_healthz(relay, connected_binaries=0, connected_phones=0)
    # the id is free again: a new claim is an ordinary claim
    mark = relay.log_mark()
    claim(relay, server_id)
    assert not relay.find_logs("server_id_conflict", since=mark)


def test_reclaim_within_grace_evicts_phones_4404(relay_factory, server_id):
    relay = relay_factory.start(args=["--grace-period", "5s"])
    binary = claim(relay, server_id)
    phones = [register(relay, server_id) for _ in range(3)]
    mark = relay.log_mark()
    binary.close()  # abrupt: a crashed daemon
    relay.wait_log("server_released", since=mark, server_id=server_id)
    wait_healthz(relay, timeout=1, connected_binaries=0, connected_phones=3)
    t0 = time.monotonic()
    new = claim(relay, server_id)
    for p in phones:
        expect_close(p, 4404, b"binary reclaimed server-id")
    assert time.monotonic() - t0 < 3
    assert not relay.find_logs("server_id_conflict", since=mark)
    assert not relay.find_logs("server_id_takeover", since=mark)
    wait_healthz(relay, connected_binaries=1, connected_phones=0)
    # no close notices about the evicted phones reach the new binary: its first message
    # is a fresh phone's frame
    p, cid = hello(relay, new, server_id, "after-reclaim")
    new.send_text(routed(cid, '{"back":1}'))
    assert read_text(p) == b'{"back":1}'
    # the cancelled grace timer must not fire later and evict the new owner
    time.sleep(5.5)
    assert p.is_open(0.1)
    assert relay.healthz()["connected_binaries"] == 1
    new.send_text(routed(cid, '{"still":1}'))
    assert read_text(p) == b'{"still":1}'


def test_phone_sending_during_grace_is_closed(relay_factory, server_id):
    relay = relay_factory.start(args=["--grace-period", "3s"])
    binary = claim(relay, server_id)
    talker, cid = hello(relay, binary, server_id, "talker")
    silent = register(relay, server_id)
    mark = relay.log_mark()
    binary.close()
    relay.wait_log("server_released", since=mark, server_id=server_id)
    talker.send_json({"into": "the void"})
    expect_close(talker, 1000, b"", timeout=3)
    # the silent sibling stays until expiry
    assert quiet_for(silent, 0.3) == b""
    h = relay.healthz()
    assert h["connected_phones"] == 1, h
