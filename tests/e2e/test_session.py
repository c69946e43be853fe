"""A whole session the way the real programs drive the relay: a binary (Python
`websockets`) claims its server-id, two phones (npm `ws`) connect and each sends a
Noise-handshake-like opaque frame, the binary answers each by conn_id, they exchange 20
frames each way, then the binary restarts (crash + reconnect within grace): the phones
get 4404 `binary reclaimed server-id`, re-dial, handshake again and the exchange works
with the new binary (reference §3, §4.2 reclaim, §4.6)."""

import asyncio
import base64
import hashlib
import json
import os

from relayctl import client_headers, conn_id_re, py_ws_connect, run_async, server_headers, wsclient_async

N_MSGS = 20


def _handshake(label: str, nonce: bytes) -> str:
    return json.dumps({"type": "handshake", "phone": label, "payload": base64.b64encode(nonce).decode()})


def _handshake_reply(payload_b64: str) -> str:
    digest = hashlib.sha256(base64.b64decode(payload_b64)).digest()
    return json.dumps({"type": "handshake_reply", "payload": base64.b64encode(digest).decode()})


def _msg(label: str, i: int, gen: int) -> str:
    return json.dumps({"type": "transport", "gen": gen, "seq": i,
                       "ct": base64.b64encode(hashlib.sha256(f"{label}/{gen}/{i}".encode()).digest()).decode()})


def _reply(label: str, i: int, gen: int) -> str:
    return json.dumps({"type": "transport", "gen": gen, "seq": i, "ack": f"{label}/{i}",
                       "ct": base64.b64encode(hashlib.sha256(f"reply/{label}/{gen}/{i}".encode()).digest()).decode()})


def _phone_steps(label: str, gen: int, then_evicted: bool) -> list:
    nonce = os.urandom(48)
    steps = [{"op": "send", "text": _handshake(label, nonce)},
             {"op": "expect_message", "text": _handshake_reply(base64.b64encode(nonce).decode()),
              "timeout_ms": 8000}]
    steps += [{"op": "send", "text": _msg(label, i, gen)} for i in range(N_MSGS)]
    steps += [{"op": "expect_message", "text": _reply(label, i, gen), "timeout_ms": 8000} for i in range(N_MSGS)]
    if then_evicted:
        steps.append({"op": "expect_close", "code": 4404, "timeout_ms": 10000})
    else:
        steps += [{"op": "close", "code": 1000}, {"op": "expect_close", "code": 1000, "timeout_ms": 5000}]
    return steps


async def _serve(ws, server_id: str, gen: int, labels: set, until_notices: bool = False) -> tuple:
    """Act as the binary until every phone in `labels` completed its handshake and sent
    N_MSGS frames (each answered at once), and with until_notices=True also until every
    phone's close notice arrived. Returns ({label: conn_id}, {conn_id: close_code})."""
    sessions, counts, notices = {}, {}, {}

    def done():
        exchanged = set(sessions) == labels and all(counts.get(l) == N_MSGS for l in labels)
        return exchanged and (not until_notices or set(notices) == set(sessions.values()))

    while not done():
        raw = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(raw, str), "the relay must send text frames"
        pairs = json.loads(raw, object_pairs_hook=lambda p: p)
        keys = [k for k, _ in pairs]
        if keys == ["conn_id", "close_code"]:
            cid, code = pairs[0][1], pairs[1][1]
            assert until_notices and cid in sessions.values() and cid not in notices, f"unexpected notice {raw}"
            notices[cid] = code
            continue
        assert keys == ["conn_id", "frame"], f"not a wrapped phone frame: {raw[:200]}"
        env = dict(pairs)
        cid, frame = env["conn_id"], dict(env["frame"])
        assert conn_id_re(server_id).fullmatch(cid), cid
        # the phone's bytes are carried verbatim (the phones send json.dumps' ", "/": " spacing)
        assert raw == '{"conn_id":' + json.dumps(cid) + ',"frame":' + json.dumps(frame) + "}", \
            f"phone frame not carried verbatim: {raw[:200]}"
        if frame["type"] == "handshake":
            # a new conn_id: the binary learns of the phone from its first frame
            assert cid not in sessions.values(), "handshake on an existing session"
            sessions[frame["phone"]] = cid
            counts[frame["phone"]] = 0
            reply = _handshake_reply(frame["payload"])
        else:
            label = next((l for l, c in sessions.items() if c == cid), None)
            assert label is not None, f"frame from a conn_id with no handshake (changed mid-session?): {raw[:200]}"
            assert frame["gen"] == gen and frame["seq"] == counts[label], frame
            assert raw.endswith(',"frame":' + _msg(label, frame["seq"], gen) + "}"), raw[:200]
            counts[label] += 1
            reply = _reply(label, frame["seq"], gen)
        # splice the phone-bound frame in verbatim, as the daemon does with ciphertext
        await ws.send('{"conn_id":' + json.dumps(cid) + ',"frame":' + reply + "}")
    return sessions, notices


def test_session_with_binary_restart(relay_factory, server_id):
    relay = relay_factory.start(args=["--grace-period", "10s"])
    url = relay.ws_url("/v1/client")
    labels = {"alice-phone", "bob-tablet"}

    async def phones(gen, evicted):
        return await asyncio.gather(*[
            wsclient_async(url, client_headers(server_id, token=f"tok-{l}", device_name=l),
                           _phone_steps(l, gen, evicted), timeout=25) for l in sorted(labels)])

    async def main():
        # generation 1
        b1 = await py_ws_connect(relay, "/v1/server", server_headers(server_id, version="pyry-2.3.0"))
        phones1 = asyncio.create_task(phones(1, evicted=True))
        sessions1, _ = await asyncio.wait_for(_serve(b1, server_id, 1, labels), 20)
        # the daemon crashes: TCP gone without a close frame
        mark = relay.log_mark()
        b1.transport.abort()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: relay.wait_log("server_released", since=mark, timeout=5, server_id=server_id))
        # in the grace window: no binary, both phones still connected
        h = await asyncio.get_running_loop().run_in_executor(None, relay.healthz)
        assert (h["connected_binaries"], h["connected_phones"]) == (0, 2), h
        # and comes back within the grace period
        b2 = await py_ws_connect(relay, "/v1/server", server_headers(server_id, version="pyry-2.3.1"))
        assert not relay.find_logs("server_id_conflict", since=mark)
        res1 = await asyncio.wait_for(phones1, 25)
        for r in res1:
            assert r["ok"], r
            assert r["close"]["code"] == 4404 and r["close"]["reason"] == "binary reclaimed server-id", r["close"]
        # generation 2: the phones re-dial and handshake with the new binary
        phones2 = asyncio.create_task(phones(2, evicted=False))
        sessions2, notices = await asyncio.wait_for(_serve(b2, server_id, 2, labels, until_notices=True), 20)
        res2 = await asyncio.wait_for(phones2, 25)
        for r in res2:
            assert r["ok"], r
        assert not set(sessions1.values()) & set(sessions2.values())
        # the re-dialled phones left with 1000: the new binary got their close notices
        assert notices == {c: 1000 for c in sessions2.values()}
        h = await asyncio.get_running_loop().run_in_executor(None, relay.healthz)
        assert h["connected_binaries"] == 1, h
        await b2.close()
        assert b2.close_code == 1000

    run_async(main(), timeout=60)
    claimed = relay.find_logs("server_claimed", server_id=server_id)
    assert [r["binary_version"] for r in claimed] == ["pyry-2.3.0", "pyry-2.3.1"]
    assert not relay.find_logs("server_id_conflict")
    text = relay.stderr_text()
    assert "tok-alice-phone" not in text and "tok-bob-tablet" not in text
    assert len(relay.find_logs("phone_registered", server_id=server_id)) == 4
