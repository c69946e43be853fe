"""relayhelp: small helpers for the protocol tests (registry, routing envelopes, close
codes, limits, lifecycle). Built on relayctl; every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
from typing import Optional

import pytest

from relayctl import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, ConnClosed, RawConn, Relay, py_ws_connect

LOCAL_IP = "127.0.0.1"


def conn_id_re(server_id: str, prefix: str = "client") -> "re.Pattern":
    """conn_id format of §2.1: <prefix>-<server-id verbatim>-<8 lowercase hex>."""
    return re.compile(re.escape(f"{prefix}-{server_id}-") + r"[0-9a-f]{8}")


def claim(relay: Relay, server_id: str, **hdr) -> RawConn:
    """A raw binary that has claimed `server_id` (server_claimed logged)."""
    mark = relay.log_mark()
    b = relay.ws_server(server_id, **hdr)
    relay.wait_log("server_claimed", since=mark, timeout=5, server_id=server_id)
    return b


def register(relay: Relay, server_id: str, **hdr) -> RawConn:
    """A raw phone registered for `server_id` (phone_registered logged)."""
    mark = relay.log_mark()
    p = relay.ws_client(server_id, **hdr)
    relay.wait_log("phone_registered", since=mark, timeout=5, server_id=server_id)
    return p


def read_text(conn, timeout: float = 5.0) -> bytes:
    """Next data message; must be a text frame. Returns the raw payload bytes."""
    op, payload = conn.read_message(timeout)
    assert op == OP_TEXT, f"relay sent a non-text data message (opcode {op:#x}): {payload[:200]!r}"
    return payload


def read_env(conn, timeout: float = 5.0) -> dict:
    """Next message as parsed JSON (text frame)."""
    return json.loads(read_text(conn, timeout))


def hello(relay: Relay, binary, server_id: str, tag: str = "hello", **hdr):
    """Register a phone, have it send {"tag": tag}; the binary reads the wrapped frame.
    Returns (phone, conn_id)."""
    p = register(relay, server_id, **hdr)
    payload = json.dumps({"tag": tag}, separators=(",", ":")).encode()
    p.send_text(payload)
    raw = read_text(binary)
    env = json.loads(raw)
    assert env.get("frame") == {"tag": tag}, f"binary got {raw!r}, expected the wrapped hello {payload!r}"
    assert conn_id_re(server_id).fullmatch(env["conn_id"]), env
    return p, env["conn_id"]


def routed(conn_id: str, frame_json: str) -> bytes:
    """A routed-frame envelope with `frame_json` spliced verbatim."""
    return b'{"conn_id":' + json.dumps(conn_id).encode() + b',"frame":' + frame_json.encode() + b"}"


def directive(conn_id: str, code, frame_json: Optional[str] = None) -> bytes:
    """A close directive; frame_json spliced verbatim when given."""
    out = b'{"conn_id":' + json.dumps(conn_id).encode() + b',"close_code":' + str(code).encode()
    if frame_json is not None:
        out += b',"frame":' + frame_json.encode()
    return out + b"}"


def expect_close(conn, code: int, reason: bytes = b"", timeout: float = 5.0, reply: bool = True,
                 tcp_timeout: float = 7.0) -> None:
    """The next frame (pings/pongs skipped) is a close with exactly code/reason; then we
    answer the close and the relay closes TCP."""
    got = conn.read_close(timeout=timeout)
    assert got == (code, reason), f"close {got!r}, expected {(code, reason)!r}"
    if reply:
        conn.send_quietly(_close_frame(code), timeout=2)
    conn.wait_closed(tcp_timeout, allow_data=True)
    conn.close()  # as a real client does once the handshake is over


def _close_frame(code: int) -> bytes:
    from relayctl import build_frame, close_payload
    return build_frame(OP_CLOSE, close_payload(code))


def drain_to_close(conn, timeout: float) -> tuple:
    """Read (and discard) everything until a close frame or TCP close, within `timeout`.
    Returns ("close", code, reason, n_data_frames) or ("tcp", None, None, n_data_frames).
    Pings are not answered (a peer that never reads would not answer them either)."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"neither a close frame nor a TCP close within {timeout}s "
                                 f"({n} data frames read)")
        try:
            f = conn.read_frame(timeout=left, check=False)
        except ConnClosed:
            return ("tcp", None, None, n)
        except TimeoutError:
            continue
        if f.opcode == OP_CLOSE:
            return ("close", f.close_code, f.close_reason, n)
        if f.opcode not in (OP_PING, OP_PONG):
            n += 1


def quiet_for(conn, seconds: float) -> bytes:
    """Bytes that arrived within `seconds` (the connection must stay open)."""
    assert conn.is_open(seconds), "relay closed the connection"
    out = bytes(conn.buf)
    conn.buf.clear()
    return out


def wait_healthz(relay: Relay, timeout: float = 3.0, **want) -> dict:
    """Poll /healthz until every key in `want` has the wanted value; return it."""
    deadline = time.monotonic() + timeout
    while True:
        h = relay.healthz()
        if all(h.get(k) == v for k, v in want.items()):
            return h
        if time.monotonic() >= deadline:
            raise AssertionError(f"/healthz {h} never matched {want} within {timeout}s")
        time.sleep(0.05)


class PyWs:
    """A Python `websockets` 10.4 client running in its own thread/event loop (so it
    answers pings by itself while the test blocks elsewhere). Received messages land in
    a queue; when the connection ends, `closed` is set and close_code/close_reason kept."""

    def __init__(self, relay: Relay, path: str, headers, open_timeout: float = 5.0, **kw):
        self.messages: "queue.Queue" = queue.Queue()
        self.closed = threading.Event()
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self.ws = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(relay, path, headers, kw), daemon=True)
        self._thread.start()
        if not self._ready.wait(open_timeout + 2):
            raise AssertionError("python websockets client did not connect in time")
        if self._error is not None:
            raise AssertionError(f"python websockets client failed to connect: {self._error!r}")

    def _run(self, relay, path, headers, kw) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main(relay, path, headers, kw))
        self._loop.close()

    async def _main(self, relay, path, headers, kw) -> None:
        try:
            self.ws = await py_ws_connect(relay, path, headers, **kw)
        except BaseException as e:  # noqa: BLE001
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            async for msg in self.ws:
                self.messages.put(msg)
        except Exception:  # noqa: BLE001  (ConnectionClosedError: abrupt end)
            pass
        finally:
            try:
                await asyncio.wait_for(self.ws.wait_closed(), 6)
            except Exception:  # noqa: BLE001
                pass
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.closed.set()

    def _call(self, coro, timeout: float = 5.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def send(self, data, timeout: float = 5.0) -> None:
        self._call(self.ws.send(data), timeout)

    def recv(self, timeout: float = 5.0):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"python client: no message within {timeout}s "
                                 f"(closed={self.closed.is_set()}, code={self.close_code})") from None

    def recv_json(self, timeout: float = 5.0):
        m = self.recv(timeout)
        assert isinstance(m, str), f"python client got a binary message {m[:100]!r}"
        return json.loads(m)

    def ping(self, data: bytes = b"py", timeout: float = 3.0) -> None:
        async def go():
            waiter = await self.ws.ping(data)
            await asyncio.wait_for(waiter, timeout)
        self._call(go(), timeout + 1)

    def close(self, code: int = 1000, timeout: float = 8.0) -> None:
        if not self.closed.is_set():
            try:
                self._call(self.ws.close(code), timeout)
            except Exception:  # noqa: BLE001
                pass
        self.closed.wait(timeout)

    def abort(self) -> None:
        """Drop TCP without a close handshake (a crashed peer)."""
        self._loop.call_soon_threadsafe(self.ws.transport.abort)
        self.closed.wait(8)

    def wait_closed(self, timeout: float) -> tuple:
        assert self.closed.wait(timeout), f"python client still open after {timeout}s"
        return self.close_code, self.close_reason

    def is_open(self) -> bool:
        return not self.closed.is_set()

    def shutdown(self) -> None:
        """Teardown: close quietly, join the thread."""
        if self.ws is not None and not self.closed.is_set():
            try:
                self._loop.call_soon_threadsafe(self.ws.transport.abort)
            except RuntimeError:
                pass
        self._thread.join(8)



@pytest.fixture
def pyws():
    """Factory fixture: pyws(relay, path, headers, **kw) -> PyWs; all shut down at teardown."""
    made: list = []

    def make(relay: Relay, path: str, headers, **kw) -> PyWs:
        c = PyWs(relay, path, headers, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.shutdown()
