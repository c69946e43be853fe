"""A whole session with independent client libraries: a binary (Python websockets) and
two phones (Node ws) exchange opaque handshake-like frames by conn_id; the binary
crashes and comes back within its grace window, the phones are evicted with 4404,
re-dial, and the exchange works again (reference §3, §4.2, §4.4, §4.5)."""

import base64
import hashlib
import json
import threading
import time

from relayctl import client_headers, run_wsclient, server_headers
from relayhelp import conn_id_re, pyws  # noqa: F401

ROUNDS = 20


def _blob(*parts) -> str:
    """Deterministic opaque bytes (like a Noise message), base64."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return base64.b64encode(h * 3).decode()


def phone_msg(who, epoch, i) -> str:
    # deliberately non-compact JSON: the relay must carry it verbatim
    return '{"type": "noise_msg", "who": "%s", "epoch": %d, "seq": %d, "payload": "%s"}' % (
        who, epoch, i, _blob("p", who, epoch, i))


def binary_msg(who, epoch, i) -> str:
    return '{ "type":"noise_reply" , "who":"%s","epoch":%d,"seq":%d,"payload":"%s" }' % (
        who, epoch, i, _blob("b", who, epoch, i))


def phone_steps(who, epoch, then_expect_close=None):
    steps = []
    for i in range(ROUNDS):
        steps.append({"op": "send", "text": phone_msg(who, epoch, i)})
        steps.append({"op": "expect_message", "text": binary_msg(who, epoch, i), "timeout_ms": 5000})
    if then_expect_close is not None:
        steps.append({"op": "expect_close", "code": then_expect_close, "timeout_ms": 12000})
    else:
        steps.append({"op": "close", "code": 1000})
        steps.append({"op": "expect_close", "timeout_ms": 5000})
    return steps


def start_phone(relay, server_id, who, epoch, then_expect_close=None, timeout=30.0):
    out = {}

    def run():
        try:
            out.update(run_wsclient(relay.ws_url("/v1/client"),
                                    client_headers(server_id, token=f"tok-{who}", device_name=f"phone {who}"),
                                    phone_steps(who, epoch, then_expect_close), timeout=timeout))
        except BaseException as e:  # noqa: BLE001
            out["ok"], out["error"] = False, f"harness: {e!r}"

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def serve(binary, server_id, epoch, who_expected, deadline_s=20.0, notices=None):
    """Binary side: answer each phone frame with the matching reply, routed by conn_id.
    Close notices met on the way go to `notices` {conn_id: code}. Returns {who: conn_id}."""
    seen = {}
    notices = {} if notices is None else notices
    counts = {w: 0 for w in who_expected}
    deadline = time.monotonic() + deadline_s
    while any(n < ROUNDS for n in counts.values()):
        left = deadline - time.monotonic()
        assert left > 0, f"binary epoch {epoch}: exchange incomplete: {counts}"
        raw = binary.recv(timeout=left)
        assert isinstance(raw, str), f"binary got a non-text message {raw[:80]!r}"
        env = json.loads(raw)
        if "frame" not in env:  # a close notice (a phone of this epoch that already finished)
            assert set(env) == {"conn_id", "close_code"}, env
            notices[env["conn_id"]] = env["close_code"]
            continue
        cid = env["conn_id"]
        assert conn_id_re(server_id).fullmatch(cid), env
        frame = env["frame"]
        who, i = frame["who"], frame["seq"]
        assert frame["epoch"] == epoch, env
        assert raw == '{"conn_id":%s,"frame":%s}' % (json.dumps(cid), phone_msg(who, epoch, i)), \
            f"phone frame not carried verbatim: {raw[:200]!r}"
        assert seen.setdefault(who, cid) == cid, f"{who} changed conn_id mid-session"
        assert i == counts[who], f"{who}: seq {i}, expected {counts[who]}"
        counts[who] += 1
        binary.send('{"conn_id":%s,"frame":%s}' % (json.dumps(cid), binary_msg(who, epoch, i)))
    assert len(set(seen.values())) == len(seen), f"phones share a conn_id: {seen}"
    return seen


def test_session_exchange_crash_reclaim_redial(relay_factory, server_id, pyws):
    relay = relay_factory.start(args=["--grace-period", "10s"])
    hdrs = server_headers(server_id, version="pyry-daemon/2.0")

    # epoch 1: the daemon and two phones; the phones stay connected afterwards
    b1 = pyws(relay, "/v1/server", hdrs)
    relay.wait_log("server_claimed", server_id=server_id)
    ta, ra = start_phone(relay, server_id, "alice", 1, then_expect_close=4404)
    tb, rb = start_phone(relay, server_id, "bob", 1, then_expect_close=4404)
    ids1 = serve(b1, server_id, 1, ["alice", "bob"])

    # the daemon crashes (TCP drop, no close handshake) and restarts within grace
    mark = relay.log_mark()
    b1.abort()
    relay.wait_log("server_released", since=mark, server_id=server_id)
    h = relay.healthz()
    assert (h["connected_binaries"], h["connected_phones"]) == (0, 2), h
    b2 = pyws(relay, "/v1/server", hdrs)
    relay.wait_log("server_claimed", since=mark, server_id=server_id)
    assert not relay.find_logs("server_id_conflict", since=mark)

    # both phones are evicted with 4404 "binary reclaimed server-id"
    for t, r, who in ((ta, ra, "alice"), (tb, rb, "bob")):
        t.join(20)
        assert r.get("ok"), f"{who} epoch 1: {r}"
        assert r["close"]["code"] == 4404, f"{who}: {r['close']}"
        assert r["close"]["reason"] == "binary reclaimed server-id", f"{who}: {r['close']}"

    # they re-dial and the exchange works again with the new daemon
    ta, ra = start_phone(relay, server_id, "alice", 2)
    tb, rb = start_phone(relay, server_id, "bob", 2)
    notices = {}
    ids2 = serve(b2, server_id, 2, ["alice", "bob"], notices=notices)
    for t, r, who in ((ta, ra, "alice"), (tb, rb, "bob")):
        t.join(20)
        assert r.get("ok"), f"{who} epoch 2: {r}"
    assert not set(ids1.values()) & set(ids2.values()), "re-dialled phones reused old conn_ids"

    # the phones' own closes reach the new daemon as close notices (code 1000)
    deadline = time.monotonic() + 5
    while len(notices) < 2:
        assert time.monotonic() < deadline, f"close notices missing: {notices}"
        env = json.loads(b2.recv(timeout=max(0.1, deadline - time.monotonic())))
        assert "frame" not in env, env
        notices[env["conn_id"]] = env["close_code"]
    assert notices == {cid: 1000 for cid in ids2.values()}, notices
    assert b2.is_open()
    assert relay.healthz()["connected_binaries"] == 1
