"""e2eproto: helpers for the protocol tests (test_proto_*.py): registry, routing
envelopes, close codes, limits, lifecycle. Built on relayctl; every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import struct
import time
from typing import Optional

from relayctl import (E2E_DIR, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WSCLIENT_MJS, RawConn, Relay,
                      build_frame, close_payload)

LOCAL_IP = "127.0.0.1"
RECLAIMED = (4404, b"binary reclaimed server-id")
NO_SERVER = (4404, b"no server with that id")
CONFLICT = (4409, b"server-id already claimed")
AT_CAP = (4429, b"too many phones for server-id")
HEARTBEAT = (1011, b"heartbeat timeout")
BACKLOG = (1011, b"phone backlog full")
SHUTDOWN = (1001, b"shutting down")


def conn_id_re(server_id: str, prefix: str = "client") -> "re.Pattern":
    """conn_id format (§2.1): <prefix>-<server-id verbatim>-<8 lowercase hex>."""
    return re.compile(re.escape(f"{prefix}-{server_id}-") + r"[0-9a-f]{8}")


def claim(relay: Relay, server_id: str, **hdr) -> RawConn:
    """A raw binary that has claimed `server_id` (server_claimed logged for it)."""
    mark = relay.log_mark()
    b = relay.ws_server(server_id, **hdr)
    relay.wait_log("server_claimed", since=mark, timeout=5, server_id=server_id)
    return b


def register(relay: Relay, server_id: str, **hdr) -> tuple:
    """A raw phone registered for `server_id`: (conn, conn_id from phone_registered)."""
    mark = relay.log_mark()
    p = relay.ws_client(server_id, **hdr)
    rec = relay.wait_log("phone_registered", since=mark, timeout=5, server_id=server_id)
    return p, rec["conn_id"]


def read_text(conn: RawConn, timeout: float = 5.0) -> bytes:
    """Next data message's raw bytes; it must be a text message."""
    op, payload = conn.read_message(timeout)
    assert op == OP_TEXT, f"relay sent a non-text data message (opcode {op:#x})"
    return payload


def ordered_json(payload: bytes) -> list:
    """A JSON object as a list of (key, value) pairs in wire order."""
    return json.loads(payload, object_pairs_hook=lambda pairs: pairs)


def wrapped(conn_id: str, frame: bytes) -> bytes:
    """The exact bytes the binary must receive for a phone frame (phone bytes verbatim)."""
    return b'{"conn_id":' + json.dumps(conn_id).encode() + b',"frame":' + frame + b"}"


def read_wrapped(binary: RawConn, timeout: float = 5.0) -> tuple:
    """Next message on the binary, which must be a wrapped phone frame:
    exactly {"conn_id": <str>, "frame": <raw>} -> (conn_id, raw frame bytes)."""
    raw = read_text(binary, timeout)
    pre = b'{"conn_id":"'
    assert raw.startswith(pre) and raw.endswith(b"}"), f"not a wrapped frame: {raw[:300]!r}"
    end = raw.index(b'"', len(pre))
    cid = raw[len(pre):end].decode()
    rest = raw[end + 1:]
    assert rest.startswith(b',"frame":'), f"not a wrapped frame (second key): {raw[:300]!r}"
    return cid, rest[len(b',"frame":'):-1]


def read_notice(binary: RawConn, timeout: float = 5.0) -> tuple:
    """Next message on the binary, which must be a close notice: exactly the keys
    conn_id, close_code in that order (no frame) -> (conn_id, close_code)."""
    raw = read_text(binary, timeout)
    pairs = ordered_json(raw)
    assert isinstance(pairs, list) and [k for k, _ in pairs] == ["conn_id", "close_code"], \
        f"expected a close notice {{conn_id, close_code}}, got {raw[:300]!r}"
    return pairs[0][1], pairs[1][1]


def route(binary: RawConn, conn_id: str, frame_raw: bytes, opcode: int = OP_TEXT) -> None:
    """Send a routed-frame envelope whose frame is the raw JSON text `frame_raw`."""
    binary.send_frame(opcode, b'{"conn_id":' + json.dumps(conn_id).encode() + b',"frame":' + frame_raw + b"}")


def directive(binary: RawConn, conn_id: str, code: int, frame_raw: Optional[bytes] = None) -> None:
    body = b'{"conn_id":' + json.dumps(conn_id).encode() + b',"close_code":' + str(code).encode()
    if frame_raw is not None:
        body += b',"frame":' + frame_raw
    binary.send_frame(OP_TEXT, body + b"}")


def barrier(conn: RawConn, timeout: float = 5.0, tag: bytes = b"barrier") -> None:
    """Ping the relay and require the pong to be the very next frame: proves the
    connection is alive and that nothing (data, close) was queued before it."""
    conn.ping(tag, timeout=timeout)


def barrier_skipping_notices(conn: RawConn, conn_ids, timeout: float = 5.0) -> list:
    """Like barrier() on a binary, but close notices for `conn_ids` may come first
    (e.g. for phones the relay itself closed); returns them as [(conn_id, code)]."""
    conn.send_frame(OP_PING, b"barrier")
    deadline = time.monotonic() + timeout
    notices = []
    while True:
        f = conn.read_frame(timeout=max(0.001, deadline - time.monotonic()))
        if f.opcode == OP_PONG and f.payload == b"barrier":
            return notices
        assert f.opcode == OP_TEXT and f.fin, f"expected a pong or a close notice, got {f!r}"
        pairs = ordered_json(f.payload)
        assert [k for k, _ in pairs] == ["conn_id", "close_code"] and pairs[0][1] in conn_ids, \
            f"expected a close notice for {conn_ids}, got {f!r}"
        notices.append((pairs[0][1], pairs[1][1]))


def expect_nothing(conn: RawConn, wait: float = 0.3) -> None:
    """No byte arrives within `wait` and the connection stays open."""
    assert conn.is_open(wait), f"connection closed (reset={conn.reset}); buffered {bytes(conn.buf[:200])!r}"
    assert not conn.buf, f"unexpected bytes: {bytes(conn.buf[:300])!r}"
    barrier(conn)


def expect_close(conn: RawConn, expected: tuple, timeout: float = 5.0, tcp_timeout: float = 6.0) -> None:
    """Read the relay's close frame (pings/pongs skipped), check (code, reason), answer
    it, and wait for the relay to close TCP."""
    got = conn.read_close(timeout)
    assert got == expected, f"close {got!r}, expected {expected!r}"
    conn.send_quietly(build_frame(OP_CLOSE, close_payload(got[0]) if got[0] is not None else b""))
    conn.wait_closed(tcp_timeout, allow_data=True)
    conn.close()  # as a real client does once the relay closed TCP


def close_and_wait(conn: RawConn, code: Optional[int] = 1000, timeout: float = 5.0) -> None:
    """Client-initiated close handshake: send close, read the echo, wait for TCP close."""
    conn.send_close(code)
    conn.read_close(timeout)
    conn.wait_closed(timeout, allow_data=True)
    conn.close()


def abort(conn: RawConn) -> None:
    """Drop the TCP connection with RST (SO_LINGER 0), no close frame."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def answer_pings_for(conn: RawConn, seconds: float) -> int:
    """Keep a connection alive for `seconds`: answer every ping, fail on anything else.
    Returns the number of pings answered."""
    deadline = time.monotonic() + seconds
    pings = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return pings
        try:
            f = conn.read_frame(timeout=left)
        except TimeoutError:
            return pings
        if f.opcode == OP_PING:
            conn.send_frame(OP_PONG, f.payload)
            pings += 1
            continue
        raise AssertionError(f"expected only pings while idle, got {f!r}")


def wait_healthz(relay: Relay, timeout: float = 3.0, **want) -> dict:
    """Poll /healthz until every key in `want` has that value; return the body."""
    deadline = time.monotonic() + timeout
    while True:
        h = relay.healthz()
        if all(h.get(k) == v for k, v in want.items()):
            return h
        if time.monotonic() >= deadline:
            raise AssertionError(f"/healthz {h} did not reach {want} within {timeout}s")
        time.sleep(0.03)


# --------------------------------------------------------------------------------------
# Node `ws` client, asynchronously (several phones at once alongside an asyncio binary)


async def wsclient_async(url: str, headers: dict, steps: list, timeout: float = 15.0) -> dict:
    """Like relayctl.run_wsclient, but as a coroutine (many clients run concurrently)."""
    node = shutil.which("node")
    assert node, "node not found on PATH"
    spec = {"url": url, "headers": dict(headers), "steps": list(steps), "options": {},
            "timeout_ms": int(timeout * 1000) - 500}
    proc = await asyncio.create_subprocess_exec(node, str(WSCLIENT_MJS), cwd=str(E2E_DIR),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(spec).encode()), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"wsclient.mjs timed out after {timeout}s") from None
    lines = out.decode("utf-8", "replace").strip().splitlines()
    assert lines, f"wsclient.mjs printed nothing (rc={proc.returncode}); stderr: {err.decode(errors='replace')}"
    return json.loads(lines[-1])

