"""relayctl: drive a real pyrycode-relay process from pytest.

Everything here is bounded: every wait takes a timeout and raises (AssertionError or
TimeoutError) when it runs out, so a hung relay fails a test instead of hanging CI.

Main pieces (see tests/e2e/README.md for the walkthrough):

  RelayFactory.start(...) -> Relay      start a relay unprivileged, wait for /healthz
  RelayFactory.boot(...)  -> BootResult run a relay expected to exit (config refusals)
  Relay.connect()         -> RawConn    tracked raw TCP connection to the relay
  Relay.ws(path, headers) -> RawConn    raw connection already upgraded (101 checked)
  RawConn                               bytes in/out, HTTP responses, WebSocket frames
  build_frame / close_payload           client frames, valid or deliberately broken
  run_wsclient(...)                     Node `ws` client driven by a JSON step script
  py_ws_connect / run_async             Python `websockets` 10.4 (legacy asyncio API)
  PyWs                                  the same client in its own thread (answers pings itself)
  claim / register / route / ...        protocol helpers: registry, envelopes, close notices,
                                        the relay's close codes (end of this file)
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import struct
import tempfile
import subprocess
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent.parent
RUN_UNPRIVILEGED = REPO_ROOT / "tools" / "run-unprivileged.sh"
WSCLIENT_MJS = E2E_DIR / "wsclient.mjs"

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE_BYTES = 256 * 1024  # reference maxFrameBytes (§3.6)

# opcodes (RFC 6455 §5.2)
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# rsv bits as they sit in the first header byte, shifted down: RSV1=4, RSV2=2, RSV3=1
RSV1, RSV2, RSV3 = 4, 2, 1

# Environment variables of the test process that reach the relay: sanitizer knobs only.
# Everything else (FLY_APP_NAME, PYRYCODE_RELAY_*, HOME, ...) is decided by the test.
_PASSTHROUGH_ENV_PREFIXES = ("ASAN_", "UBSAN_", "LSAN_", "TSAN_", "MSAN_", "RELAY_RUN_UID")

STOP_GRACE_S = 12.0  # SIGTERM -> SIGKILL
READY_TIMEOUT_S = 10.0
LOG_LINES_MAX = 20000  # per relay; more are counted, not kept


# --------------------------------------------------------------------------------------
# small utilities


def unique_id(prefix: str = "e2e") -> str:
    """A server-id (or any name) unique to this call: prefix + 12 random hex digits."""
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", prefix)[:60]
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------------------
# TLS: RELAY_TLS=1 runs every relay the factory starts in certificate-files mode
# (--https-listen, --tls-cert, --tls-key) and every client over TLS, so the whole suite
# runs over wss:// as over ws://. One self-signed P-256 certificate per test session,
# made with the openssl command (names localhost, 127.0.0.1 and ::1).

_TLS_DIR: Optional[Path] = None


def tls_enabled() -> bool:
    return os.environ.get("RELAY_TLS", "") not in ("", "0")


def tls_material() -> tuple:
    """(cert.pem, key.pem) paths of the session's test certificate, made on first use."""
    global _TLS_DIR
    if _TLS_DIR is None:
        d = Path(tempfile.mkdtemp(prefix="relay-e2e-tls-"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2",
                        "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"],
                       check=True, capture_output=True, timeout=30)
        os.chmod(d, 0o755)  # the relay runs as nobody
        for f in ("key.pem", "cert.pem"):
            os.chmod(d / f, 0o644)
        _TLS_DIR = d
        atexit.register(shutil.rmtree, str(d), True)
    return str(_TLS_DIR / "cert.pem"), str(_TLS_DIR / "key.pem")


# TLS names that stand for a loopback address in these tests (a --domain relay's domain):
# name -> (address to connect to, CA file to trust). Filled by Relay.ws_url.
_SERVER_NAMES: dict = {}


def tls_client_context(cafile: Optional[str] = None) -> ssl.SSLContext:
    """A client context trusting cafile (default: the session's certificate) alone."""
    ctx = ssl.create_default_context(cafile=cafile or tls_material()[0])
    ctx.check_hostname = True
    return ctx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ws_key(raw: Optional[bytes] = None) -> str:
    """A Sec-WebSocket-Key: base64 of 16 (random) bytes."""
    return base64.b64encode(raw if raw is not None else os.urandom(16)).decode()


def ws_accept(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer for `key`."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def wait_until(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll pred() until it returns a truthy value; return it. Raise TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# request building

HeaderArg = Union[Mapping[str, Optional[str]], Sequence[tuple]]


def _header_items(headers: Optional[HeaderArg]) -> list:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v) for k, v in items if v is not None]


def merge_headers(*parts: Optional[HeaderArg]) -> list:
    """Merge header sets left to right into a list of (name, value) pairs.

    A name in a later part replaces every earlier occurrence of that name
    (case-insensitive; the first one keeps its position). A value of None removes the
    header: it stays in the list as a tombstone, so merging the result over another set
    (as RawConn.upgrade does with the default handshake headers) still removes it;
    serialization skips tombstones. Repeated names within one part are all kept, in order.
    """
    out: list = []
    for part in parts:
        if part is None:
            continue
        items = list(part.items() if isinstance(part, Mapping) else part)
        seen: set = set()
        for name, value in items:
            lname = name.lower()
            if lname not in seen:
                seen.add(lname)
                idxs = [i for i, (n, _) in enumerate(out) if n.lower() == lname]
                if idxs:
                    out[idxs[0]] = (name, value)
                    for i in reversed(idxs[1:]):
                        out.pop(i)
                    continue
            out.append((name, value))
    return out


def server_headers(server_id: str, version: str = "e2e-1.0", user_agent: str = "pyrycode-e2e/1.0") -> dict:
    """Required headers of /v1/server (§2.2)."""
    return {"X-Pyrycode-Server": server_id, "X-Pyrycode-Version": version, "User-Agent": user_agent}


def client_headers(server_id: str, token: str = "e2e-token", user_agent: str = "pyrycode-e2e-phone/1.0",
                   device_name: Optional[str] = None) -> dict:
    """Required headers of /v1/client (§2.3); device name only when given."""
    h = {"X-Pyrycode-Server": server_id, "X-Pyrycode-Token": token, "User-Agent": user_agent}
    if device_name is not None:
        h["X-Pyrycode-Device-Name"] = device_name
    return h


def upgrade_headers(key: Optional[str] = None) -> dict:
    """A valid RFC 6455 client handshake's headers (without Host)."""
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": key or ws_key()}


def build_request(method: str = "GET", target: str = "/healthz", headers: Optional[HeaderArg] = None,
                  body: bytes = b"", version: str = "HTTP/1.1", host: Optional[str] = "relay.test",
                  content_length: Optional[bool] = None) -> bytes:
    """Serialize an HTTP/1.x request. Host first (unless host=None), then `headers` in
    order; Content-Length is added when there is a body (content_length=None) or forced."""
    lines = [f"{method} {target} {version}"]
    items = _header_items(headers)
    if host is not None and not any(n.lower() == "host" for n, _ in items):
        lines.append(f"Host: {host}")
    for name, value in items:
        lines.append(f"{name}: {value}")
    if (content_length is None and body) or content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def build_upgrade(path: str, headers: Optional[HeaderArg], key: Optional[str] = None,
                  method: str = "GET") -> bytes:
    """Upgrade request: upgrade_headers(key) merged with `headers` (None removes one)."""
    return build_request(method, path, merge_headers(upgrade_headers(key), headers))


# --------------------------------------------------------------------------------------
# WebSocket frames


def build_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
                mask_key: Optional[bytes] = None, length: Optional[int] = None,
                len_form: Optional[int] = None) -> bytes:
    """A client frame, valid or not.

    opcode   any 0..15 (reserved ones too)
    rsv      3-bit value: RSV1=4, RSV2=2, RSV3=1
    mask     False sends an unmasked frame (a protocol violation from a client)
    length   declared payload length if different from len(payload)
    len_form force the length encoding: 7, 16 or 64 (default: minimal)
    """
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    form = len_form or (7 if n <= 125 else 16 if n <= 0xFFFF else 64)
    mbit = 0x80 if mask else 0
    if form == 7:
        assert n <= 125, "7-bit length form holds at most 125"
        hdr = struct.pack("!BB", b0, mbit | n)
    elif form == 16:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    elif form == 64:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    else:
        raise ValueError("len_form must be 7, 16 or 64")
    if not mask:
        return hdr + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return hdr + key + apply_mask(payload, key)


def apply_mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def close_payload(code: Optional[int] = 1000, reason: Union[bytes, str] = b"") -> bytes:
    """Close frame payload: 2-byte code + reason (code None: empty payload)."""
    if isinstance(reason, str):
        reason = reason.encode()
    if code is None:
        return b""
    return struct.pack("!H", code) + reason


def text_frames(data: bytes, chunks: Sequence[int], opcode: int = OP_TEXT) -> bytes:
    """Split `data` into a fragmented message with the given fragment sizes (the last
    fragment takes whatever remains)."""
    out, pos = [], 0
    for i, size in enumerate(chunks):
        last = i == len(chunks) - 1
        part = data[pos:] if last else data[pos:pos + size]
        pos += len(part)
        out.append(build_frame(opcode if i == 0 else OP_CONT, part, fin=last))
    return b"".join(out)


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes

    @property
    def close_code(self) -> Optional[int]:
        assert self.opcode == OP_CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> bytes:
        assert self.opcode == OP_CLOSE
        return self.payload[2:]

    def __repr__(self) -> str:
        p = self.payload if len(self.payload) <= 64 else self.payload[:64] + b"..."
        return (f"Frame(op={self.opcode:#x}, fin={self.fin}, rsv={self.rsv}, masked={self.masked}, "
                f"len={len(self.payload)}, payload={p!r})")


def check_server_frame(f: Frame) -> None:
    """What every frame from the relay must satisfy (RFC 6455 + reference §3.6)."""
    assert not f.masked, f"server sent a masked frame: {f!r}"
    assert f.rsv == 0, f"server set RSV bits (no extension was negotiated): {f!r}"
    assert f.opcode in (OP_TEXT, OP_CONT, OP_CLOSE, OP_PING, OP_PONG), \
        f"server sent opcode {f.opcode:#x}; the relay only ever sends text data frames: {f!r}"
    if f.opcode >= 0x8:
        assert f.fin, f"server fragmented a control frame: {f!r}"
        assert len(f.payload) <= 125, f"server control frame over 125 bytes: {f!r}"
    if f.opcode == OP_CLOSE:
        assert len(f.payload) != 1, f"server close frame with a 1-byte payload: {f!r}"
        try:
            f.payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise AssertionError(f"server close reason is not UTF-8: {f!r}") from None


# --------------------------------------------------------------------------------------
# HTTP responses


@dataclass
class HttpResponse:
    version: str
    status: int
    reason: str
    headers: list  # [(name, value)] in wire order
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> Optional[str]:
        """First value of `name` (case-insensitive), None if absent."""
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None

    def header_tokens(self, name: str) -> list:
        """Comma-separated tokens of every `name` header, lower-cased."""
        return [t.strip().lower() for v in self.header_all(name) for t in v.split(",") if t.strip()]

    def __repr__(self) -> str:
        return f"HttpResponse({self.status} {self.reason!r}, headers={self.headers!r}, body={self.body[:200]!r})"


class ConnClosed(AssertionError):
    """The peer closed the TCP connection while more bytes were expected."""


# --------------------------------------------------------------------------------------
# raw TCP connection


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2_header(src: str = "127.0.0.1", src_port: int = 40000, dst: str = "127.0.0.1", dst_port: int = 443,
                    ver_cmd: int = 0x21, family: Optional[int] = None, tlvs: bytes = b"") -> bytes:
    """A PROXY protocol v2 header (proxy-protocol.txt §2.2): command PROXY (0x21; LOCAL is
    0x20), TCP over IPv4 or IPv6 from the addresses' kind unless `family` says otherwise
    (0x00 UNSPEC, 0x12 UDP4, ...), then `tlvs`."""
    v6 = ":" in src
    fam = (0x21 if v6 else 0x11) if family is None else family
    if fam == 0x00:
        block = b""
    else:
        af = socket.AF_INET6 if v6 else socket.AF_INET
        block = (socket.inet_pton(af, src) + socket.inet_pton(af, dst)
                 + struct.pack(">HH", src_port, dst_port))
    payload = block + tlvs
    return PROXY_V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack(">H", len(payload)) + payload


class RawConn:
    """A client TCP connection with an input buffer, bounded reads and frame helpers.

    eof/reset tell how the peer closed (FIN -> eof; RST/ECONNRESET -> eof and reset).
    Every read takes `timeout` (seconds, default self.timeout) and raises TimeoutError.
    """

    def __init__(self, host: str, port: int, timeout: float = 5.0, nodelay: bool = True,
                 source: Optional[str] = None, rcvbuf: Optional[int] = None, mss: Optional[int] = None,
                 tls: Optional[ssl.SSLContext] = None, preamble: bytes = b"",
                 server_name: Optional[str] = None):
        """rcvbuf / mss: SO_RCVBUF / TCP_MAXSEG set before connecting, so the relay sees a
        small window and keeps what the test does not read in its own outbox (a slow
        reader), instead of in loopback's megabytes of socket buffers. tls: speak TLS
        over the connection (the handshake happens here, bounded by timeout). preamble:
        bytes sent first, before TLS (a PROXY protocol header, proxy_v2_header).
        server_name: the TLS name to send and verify (default: host)."""
        self.host, self.port, self.timeout = host, port, timeout
        if rcvbuf is None and mss is None:
            self.sock = socket.create_connection((host, port), timeout=timeout,
                                                 source_address=(source, 0) if source else None)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if mss is not None:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            if source:
                self.sock.bind((source, 0))
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if preamble:
            self.sock.sendall(preamble)
        if tls is not None:  # the handshake happens here, bounded by timeout
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_name or host)
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.closed_locally = False

    # -- sending
    def send(self, data: bytes, timeout: Optional[float] = None) -> None:
        """sendall, bounded; raises on error."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        self.sock.sendall(data)

    def send_quietly(self, data: bytes, timeout: Optional[float] = None) -> bool:
        """sendall that treats a connection the peer already dropped as fine: returns
        False on EPIPE/ECONNRESET/timeout (the test then checks what the peer said)."""
        try:
            self.send(data, timeout)
            return True
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            return False

    def send_in_background(self, data: bytes, timeout: float = 10.0) -> threading.Thread:
        """Send a large buffer from a thread (quietly), so the test can read concurrently
        (e.g. the relay answers an oversized frame before its payload is all sent)."""
        t = threading.Thread(target=self.send_quietly, args=(data, timeout), daemon=True)
        t.start()
        return t

    def send_slowly(self, data: bytes, chunk: int = 1, delay: float = 0.002) -> None:
        """Send `chunk` bytes at a time with a sleep between (TCP_NODELAY is on, so each
        chunk is its own segment)."""
        for i in range(0, len(data), chunk):
            self.send(data[i:i + chunk])
            if delay:
                time.sleep(delay)

    def send_frame(self, opcode: int, payload: bytes = b"", **kw) -> None:
        self.send(build_frame(opcode, payload, **kw))

    def send_text(self, text: Union[str, bytes]) -> None:
        self.send_frame(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def send_close(self, code: Optional[int] = 1000, reason: Union[bytes, str] = b"") -> None:
        self.send_frame(OP_CLOSE, close_payload(code, reason))

    def send_json(self, obj, opcode: int = OP_TEXT) -> None:
        """One compact JSON message (e.g. a routing envelope)."""
        self.send_frame(opcode, json.dumps(obj, separators=(",", ":")).encode())

    # -- receiving
    def _recv_into_buf(self, deadline: float) -> bool:
        """Read once into buf before deadline. False at EOF. Raises TimeoutError."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the relay in time") from None
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_exact(self, n: int, timeout: Optional[float] = None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buf) < n:
            try:
                more = self._recv_into_buf(deadline)
            except TimeoutError:
                raise TimeoutError(f"waited for {n} bytes, have {len(self.buf)}: {bytes(self.buf[:200])!r}") from None
            if not more:
                raise ConnClosed(f"connection closed (reset={self.reset}) after {len(self.buf)} of {n} "
                                 f"expected bytes: {bytes(self.buf[:200])!r}")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, delim: bytes, timeout: Optional[float] = None, max_bytes: int = 1 << 20) -> bytes:
        """Bytes up to and including delim."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            assert len(self.buf) <= max_bytes, f"no {delim!r} within {max_bytes} bytes"
            try:
                more = self._recv_into_buf(deadline)
            except TimeoutError:
                raise TimeoutError(f"waited for {delim!r}; have {bytes(self.buf[:300])!r}") from None
            if not more:
                raise ConnClosed(f"connection closed (reset={self.reset}) before {delim!r}; "
                                 f"have {bytes(self.buf[:300])!r}")

    def read_available(self, wait: float = 0.2) -> bytes:
        """Whatever arrives within `wait` seconds (possibly b""); never raises on EOF."""
        deadline = time.monotonic() + wait
        try:
            while self._recv_into_buf(deadline):
                pass
        except TimeoutError:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_http_response(self, timeout: Optional[float] = None, head_only: bool = False) -> HttpResponse:
        """One HTTP/1.x response: status line, headers, body (Content-Length, chunked, or
        until EOF; none for 1xx/204/304 or head_only). Bytes after it stay buffered (for
        a 101 they are the first WebSocket frames)."""
        t = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        head = self.read_until(b"\r\n\r\n", timeout=t, max_bytes=1 << 20)
        lines = head[:-4].split(b"\r\n")
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        assert m, f"malformed status line {lines[0]!r}"
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep and name and name == name.strip(), f"malformed response header line {line!r}"
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        resp = HttpResponse(m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"),
                            headers, b"", head)
        if head_only or resp.status < 200 or resp.status in (204, 304):
            return resp
        left = lambda: max(0.0, deadline - time.monotonic())  # noqa: E731
        te = resp.header("Transfer-Encoding")
        cl = resp.header("Content-Length")
        if te and "chunked" in te.lower():
            body = bytearray()
            while True:
                size_line = self.read_until(b"\r\n", timeout=left())
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    self.read_until(b"\r\n", timeout=left())  # (no trailers expected)
                    break
                body += self.read_exact(size, timeout=left())
                assert self.read_exact(2, timeout=left()) == b"\r\n", "bad chunk terminator"
            resp.body = bytes(body)
        elif cl is not None:
            assert re.fullmatch(r"\d+", cl), f"bad Content-Length {cl!r}"
            resp.body = self.read_exact(int(cl), timeout=left())
        else:
            # no framing: the body runs to EOF
            while True:
                try:
                    if not self._recv_into_buf(deadline):
                        break
                except TimeoutError:
                    raise TimeoutError(f"response without Content-Length did not end: {resp!r}") from None
            resp.body = bytes(self.buf)
            self.buf.clear()
        return resp

    def read_frame(self, timeout: Optional[float] = None, check: bool = True) -> Frame:
        """One frame from the relay. check=True applies check_server_frame (unmasked,
        no RSV, only text data frames, sane control frames)."""
        t = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        left = lambda: max(0.001, deadline - time.monotonic())  # noqa: E731
        b0, b1 = self.read_exact(2, timeout=left())
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self.read_exact(2, timeout=left()))
        elif n == 127:
            (n,) = struct.unpack("!Q", self.read_exact(8, timeout=left()))
        masked = bool(b1 & 0x80)
        key = self.read_exact(4, timeout=left()) if masked else None
        payload = self.read_exact(n, timeout=left()) if n else b""
        if key:
            payload = apply_mask(payload, key)
        f = Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, masked, payload)
        if check:
            check_server_frame(f)
        return f

    def read_message(self, timeout: Optional[float] = None) -> tuple:
        """Next data message (reassembled), answering nothing; control frames other than
        close are skipped (pings are answered with pongs). Returns (opcode, payload)."""
        t = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        parts, op = [], None
        while True:
            f = self.read_frame(timeout=max(0.001, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                self.send_frame(OP_PONG, f.payload)
                continue
            if f.opcode == OP_PONG:
                continue
            assert f.opcode != OP_CLOSE, f"expected a data message, got close {f.close_code} {f.close_reason!r}"
            if op is None:
                assert f.opcode != OP_CONT, "continuation frame without a started message"
                op = f.opcode
            else:
                assert f.opcode == OP_CONT, f"new data frame inside a fragmented message: {f!r}"
            parts.append(f.payload)
            if f.fin:
                return op, b"".join(parts)

    def read_json(self, timeout: Optional[float] = None):
        """Next data message, which must be a text frame holding JSON; returns it parsed."""
        op, payload = self.read_message(timeout)
        assert op == OP_TEXT, f"relay sent a non-text data message: opcode {op:#x}"
        return json.loads(payload)

    def read_close(self, timeout: Optional[float] = None, skip_pongs: bool = True) -> tuple:
        """Read frames until a close frame; return (code, reason_bytes) (code None when the
        close payload is empty). Pongs are skipped; a data frame before the close fails."""
        t = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        while True:
            try:
                f = self.read_frame(timeout=max(0.001, deadline - time.monotonic()))
            except ConnClosed as e:
                raise ConnClosed(f"TCP closed without a close frame: {e}") from None
            if f.opcode == OP_CLOSE:
                return f.close_code, f.close_reason
            if f.opcode in (OP_PONG, OP_PING) and skip_pongs:
                continue
            raise AssertionError(f"expected a close frame, got {f!r}")

    def ping(self, payload: bytes = b"e2e-ping", timeout: Optional[float] = None) -> Frame:
        """Send a ping and return the pong (fails on anything else, e.g. a close)."""
        self.send_frame(OP_PING, payload)
        f = self.read_frame(timeout=timeout)
        assert f.opcode == OP_PONG, f"expected pong to ping {payload!r}, got {f!r}"
        assert f.payload == payload, f"pong payload {f.payload!r} != ping payload {payload!r}"
        return f

    def wait_closed(self, timeout: float = 5.0, allow_data: bool = False) -> float:
        """Wait for the relay to close TCP (FIN or RST); return seconds waited. Fails if
        it stays open past `timeout`, or (allow_data=False) if any byte arrives first."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        if self.buf and not allow_data:
            raise AssertionError(f"unexpected bytes before TCP close: {bytes(self.buf[:200])!r}")
        while True:
            try:
                more = self._recv_into_buf(deadline)
            except TimeoutError:
                raise AssertionError(f"relay did not close the TCP connection within {timeout:.1f}s") from None
            if not more:
                return time.monotonic() - t0
            if not allow_data:
                raise AssertionError(f"unexpected bytes before TCP close: {bytes(self.buf[:200])!r}")
            self.buf.clear()

    def is_open(self, wait: float = 0.05) -> bool:
        """True if the connection is still open after `wait` seconds (bytes that arrive
        meanwhile are kept in buf)."""
        deadline = time.monotonic() + max(wait, 0.01)
        try:
            while self._recv_into_buf(deadline):
                pass
            return False
        except TimeoutError:
            return True

    # -- high level
    def request(self, method: str = "GET", target: str = "/healthz", headers: Optional[HeaderArg] = None,
                body: bytes = b"", **kw) -> HttpResponse:
        self.send(build_request(method, target, headers, body, **kw))
        return self.read_http_response(head_only=(method == "HEAD"))

    def upgrade(self, path: str = "/v1/server", headers: Optional[HeaderArg] = None,
                key: Optional[str] = None, expect: Optional[int] = 101) -> HttpResponse:
        """Send an upgrade request (valid handshake headers merged with `headers`) and read
        the response; with expect=101 also check the handshake answer."""
        key = key or ws_key()
        self.send(build_upgrade(path, headers, key))
        resp = self.read_http_response()
        if expect is not None:
            assert resp.status == expect, f"expected {expect}, got {resp!r}"
        if resp.status == 101:
            check_101(resp, key)
        return resp

    def close(self) -> None:
        if not self.closed_locally:
            self.closed_locally = True
            try:
                self.sock.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_101(resp: HttpResponse, key: str) -> None:
    """A correct 101 answer to a handshake with `key` (RFC 6455 §4.2.2, reference §2.1)."""
    assert resp.status == 101, resp
    assert resp.header("Sec-WebSocket-Accept") == ws_accept(key), \
        f"Sec-WebSocket-Accept {resp.header('Sec-WebSocket-Accept')!r} != {ws_accept(key)!r}"
    assert resp.header_tokens("Upgrade") == ["websocket"], resp
    assert "upgrade" in resp.header_tokens("Connection"), resp
    assert not resp.has_header("Sec-WebSocket-Protocol"), f"relay negotiated a subprotocol: {resp!r}"
    assert not resp.has_header("Sec-WebSocket-Extensions"), f"relay negotiated an extension: {resp!r}"


# --------------------------------------------------------------------------------------
# log lines (Go slog text format: key=value, values quoted Go-style when needed)

_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
               "\\": "\\", '"': '"', "'": "'"}


def _go_unquote(s: str, i: int) -> tuple:
    """Parse a Go-quoted string starting at s[i] == '"'; return (value, index after)."""
    assert s[i] == '"'
    i += 1
    out = []
    raw = bytearray()

    def flush():
        if raw:
            out.append(raw.decode("utf-8", "replace"))
            raw.clear()

    while i < len(s):
        c = s[i]
        if c == '"':
            flush()
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(s):
            e = s[i + 1]
            if e == "x":
                raw.append(int(s[i + 2:i + 4], 16))
                i += 4
                continue
            flush()
            if e in "uU":
                w = 4 if e == "u" else 8
                out.append(chr(int(s[i + 2:i + 2 + w], 16)))
                i += 2 + w
                continue
            if e in "01234567":
                raw.append(int(s[i + 1:i + 4], 8))
                i += 4
                continue
            out.append(_GO_ESCAPES.get(e, e))
            i += 2
            continue
        flush()
        out.append(c)
        i += 1
    flush()
    return "".join(out), i


def parse_log_line(line: str) -> dict:
    """`time=... level=INFO msg=server_claimed server_id=abc` -> dict. Lines that are not
    key=value (e.g. a sanitizer report) give {"_raw": line}."""
    rec: dict = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        j = line.find("=", i)
        if j < 0 or " " in line[i:j] or j == i:
            return {"_raw": line}
        key = line[i:j]
        i = j + 1
        if i < n and line[i] == '"':
            val, i = _go_unquote(line, i)
        else:
            k = line.find(" ", i)
            k = n if k < 0 else k
            val, i = line[i:k], k
        rec[key] = val
    rec["_raw"] = line
    return rec


# --------------------------------------------------------------------------------------
# the relay process


@dataclass
class BootResult:
    """Outcome of a relay run that was expected to exit by itself."""
    returncode: int
    stderr: str
    stdout: str

    @property
    def log_lines(self) -> list:
        return self.stderr.splitlines()

    @property
    def log_records(self) -> list:
        return [parse_log_line(l) for l in self.log_lines]


class Relay:
    """A running relay. Attributes: host, port, metrics_port (None when disabled), args
    (full argv after the binary), env, proc (Popen), returncode (None while running)."""

    def __init__(self, binary: str, args: list, env: dict, host: str, port: int,
                 metrics_port: Optional[int], wrapper: Sequence[str] = ()):
        self.binary, self.args, self.env, self.wrapper = binary, args, env, list(wrapper)
        self.host, self.port, self.metrics_port = host, port, metrics_port
        self.proc: Optional[subprocess.Popen] = None
        self._lines: list = []
        self._stdout: list = []
        self._cond = threading.Condition()
        self._threads: list = []
        self._conns: list = []
        self.started_at = None
        # certificate-files mode: clients speak TLS and trust the relay's own certificate
        self.tls_cert = args[args.index("--tls-cert") + 1] if "--tls-cert" in args else None
        self.tls = self.tls_cert is not None
        # --domain relays (test_autocert.py): the name clients send as SNI and Host and
        # check the certificate against; connections still go to `host`
        self.tls_server_name: Optional[str] = None
        # --https-proxy-protocol: the harness's own connections (readiness, connect())
        # start with a PROXY v2 header from 127.0.0.1
        self.proxy_v2 = "--https-proxy-protocol" in args

    # -- lifecycle
    def _spawn(self) -> None:
        self.proc = subprocess.Popen([str(RUN_UNPRIVILEGED), *self.wrapper, self.binary, *self.args], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd="/")
        self.started_at = time.monotonic()
        _LIVE_PROCS.append(self.proc)
        for stream, sink in ((self.proc.stderr, self._lines), (self.proc.stdout, self._stdout)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, stream, sink) -> None:
        # A relay stuck in an error loop can log millions of lines: keep the first
        # LOG_LINES_MAX, then only count (and keep the very last line for the report).
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                if len(sink) < LOG_LINES_MAX:
                    sink.append(line)
                else:
                    self.log_lines_dropped += 1
                    self.last_dropped_line = line
                self._cond.notify_all()
        stream.close()
        with self._cond:
            self._cond.notify_all()

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll GET /healthz until 200. Raises RelayExited if the process exits first."""
        deadline = time.monotonic() + timeout
        last_err: object = None
        while time.monotonic() < deadline:
            if not self.alive():
                self._join_pumps()
                raise RelayExited(self.proc.returncode, self.log_tail(), self.stdout_text())
            try:
                with RawConn(self.host, self.port, timeout=1.0,
                             tls=tls_client_context(self.tls_cert) if self.tls else None,
                             preamble=proxy_v2_header() if self.proxy_v2 else b"") as c:
                    r = c.request("GET", "/healthz", headers={"Connection": "close"})
                if r.status == 200:
                    return
                last_err = r
            except (OSError, TimeoutError, AssertionError) as e:
                last_err = e
            time.sleep(0.02)
        raise AssertionError(f"relay not ready within {timeout}s (last: {last_err!r}); "
                             f"log:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_GRACE_S, sig: int = signal.SIGTERM) -> int:
        """Close tracked connections, send `sig`, wait up to `timeout`, then SIGKILL.
        Returns the exit code (negative: killed by that signal). Idempotent."""
        for c in self._conns:
            c.close()
        self._conns.clear()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed_after_timeout = True
                self.proc.kill()
                self.proc.wait(5)
        self._join_pumps()
        return self.proc.returncode

    killed_after_timeout = False
    log_lines_dropped = 0
    last_dropped_line = ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit by itself; returns its exit code."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"relay still running after {timeout}s; log:\n{self.log_tail()}") from None
        self._join_pumps()
        return rc

    def _join_pumps(self) -> None:
        for t in self._threads:
            t.join(2)

    # -- logs
    def log_lines(self) -> list:
        """Every stderr line so far (the relay logs key=value lines there)."""
        with self._cond:
            return list(self._lines)

    def log_records(self, since: int = 0) -> list:
        """Parsed stderr lines (dicts with time, level, msg, keys..., _raw)."""
        return [parse_log_line(l) for l in self.log_lines()[since:]]

    def stderr_text(self) -> str:
        return "\n".join(self.log_lines())

    def stdout_text(self) -> str:
        with self._cond:
            return "\n".join(self._stdout)

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_lines()
        if self.log_lines_dropped:
            return "\n".join(lines[:10] + [f"... ({len(lines) - 10 + self.log_lines_dropped} more lines, "
                                            f"last one:)", self.last_dropped_line])
        return "\n".join(lines[-n:])

    def log_mark(self) -> int:
        """Current number of log lines; pass as `since` to only look at later lines."""
        with self._cond:
            return len(self._lines)

    def find_logs(self, msg: Optional[str] = None, since: int = 0, **fields) -> list:
        """Records (from line `since`) whose msg and fields match exactly."""
        out = []
        for rec in self.log_records(since):
            if msg is not None and rec.get("msg") != msg:
                continue
            if all(rec.get(k) == str(v) for k, v in fields.items()):
                out.append(rec)
        return out

    def wait_log(self, msg: Optional[str] = None, timeout: float = 5.0, since: int = 0, **fields) -> dict:
        """Wait until a log line with this msg (and key=value fields) appears; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines[since:]:
                    rec = parse_log_line(line)
                    if (msg is None or rec.get("msg") == msg) and all(rec.get(k) == str(v) for k, v in fields.items()):
                        return rec
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log line msg={msg!r} {fields!r} within {timeout}s; log:\n"
                                         + "\n".join(self._lines[-40:]))
                self._cond.wait(left)

    # -- connections
    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self._netloc()}"

    def _netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def ws_url(self, path: str = "/v1/server") -> str:
        if self.tls_server_name:  # clients resolve it to `host` (wsclient_spec, py_ws_connect)
            _SERVER_NAMES[self.tls_server_name] = (self.host, self.tls_cert)
            return f"wss://{self.tls_server_name}:{self.port}{path}"
        return f"{'wss' if self.tls else 'ws'}://{self._netloc()}{path}"

    def connect(self, timeout: float = 5.0, **kw) -> RawConn:
        """A connection to the public listener (over TLS in certificate-files mode),
        closed at teardown."""
        if self.tls and "tls" not in kw:
            kw["tls"] = tls_client_context(self.tls_cert)
        if self.tls_server_name:
            kw.setdefault("server_name", self.tls_server_name)
        if self.proxy_v2 and "preamble" not in kw:
            kw["preamble"] = proxy_v2_header()
        c = RawConn(self.host, self.port, timeout=timeout, **kw)
        self._conns.append(c)
        return c

    def http(self, method: str = "GET", target: str = "/healthz", headers: Optional[HeaderArg] = None,
             body: bytes = b"", **kw) -> HttpResponse:
        """One request on a fresh connection."""
        c = self.connect()
        try:
            return c.request(method, target, headers, body, **kw)
        finally:
            c.close()

    def ws(self, path: str = "/v1/server", headers: Optional[HeaderArg] = None, **kw) -> RawConn:
        """A raw connection upgraded to WebSocket (101 and its headers checked)."""
        c = self.connect(**kw)
        c.upgrade(path, headers)
        return c

    def ws_server(self, server_id: str, **hdr_overrides) -> RawConn:
        """A raw /v1/server WebSocket for `server_id` (a binary)."""
        return self.ws("/v1/server", merge_headers(server_headers(server_id), hdr_overrides or None))

    def ws_client(self, server_id: str, **hdr_overrides) -> RawConn:
        """A raw /v1/client WebSocket for `server_id` (a phone)."""
        return self.ws("/v1/client", merge_headers(client_headers(server_id), hdr_overrides or None))

    def metrics_text(self) -> str:
        """GET /metrics on the loopback metrics listener (start(metrics=True))."""
        assert self.metrics_port, "relay started without metrics=True"
        with RawConn("127.0.0.1", self.metrics_port) as c:
            r = c.request("GET", "/metrics", {"Connection": "close"})
        assert r.status == 200, r
        return r.body.decode()

    def healthz(self) -> dict:
        r = self.http("GET", "/healthz")
        assert r.status == 200, r
        return json.loads(r.body)


_LIVE_PROCS: list = []


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a relay behind (e.g. pytest interrupted before fixture teardown)."""
    for p in _LIVE_PROCS:
        if p.poll() is None:
            p.kill()


class RelayExited(AssertionError):
    def __init__(self, returncode: int, stderr: str, stdout: str = ""):
        super().__init__(f"relay exited with code {returncode} before it was ready; stderr:\n{stderr}")
        self.returncode, self.stderr, self.stdout = returncode, stderr, stdout


def relay_env(extra: Optional[Mapping[str, Optional[str]]] = None, inherit: bool = False) -> dict:
    """The relay's environment: a clean one (PATH, LANG, sanitizer options) unless
    inherit=True, plus `extra` (a value of None removes a variable)."""
    if inherit:
        env = dict(os.environ)
    else:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        env.update({k: v for k, v in os.environ.items() if k.startswith(_PASSTHROUGH_ENV_PREFIXES)})
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class RelayFactory:
    """Starts relays for one test; stops all of them at teardown (see conftest.py)."""

    def __init__(self, binary: str):
        self.binary = binary
        self.relays: list = []

    def start(self, args: Sequence[str] = (), env: Optional[Mapping[str, Optional[str]]] = None,
              host: str = "127.0.0.1", metrics: bool = False, ready_timeout: float = READY_TIMEOUT_S,
              expect_exit_code: Optional[int] = 0, inherit_env: bool = False,
              wrapper: Sequence[str] = (), tls: Optional[bool] = None) -> Relay:
        """Start `RELAY_BIN --insecure-listen host:<free port> --metrics-listen=[127.0.0.1:<free port>]
        <args>` through tools/run-unprivileged.sh and wait for /healthz.

        host: "" listens on every address (`:PORT`); the test then connects over 127.0.0.1.
        wrapper: a command the relay runs under (e.g. ["prlimit", "--nofile=256:4096"]).
        expect_exit_code: what teardown asserts after SIGTERM (None: do not check).
        tls: None follows RELAY_TLS (the whole suite over TLS); False keeps this relay
        plaintext (a test of something TLS has no part in: a proxy in front, zero-copy).
        A bind race on the chosen port (exit before ready with code 1) is retried."""
        last: Optional[RelayExited] = None
        # host "" listens on every address (":PORT", an IPv6 socket taking IPv4 too); the
        # test connects to it over IPv4 loopback.
        connect_host = host or "127.0.0.1"
        workers = os.environ.get("RELAY_WORKERS")
        if workers and not any(a == "--workers" or a.startswith("--workers=") for a in args):
            args = ["--workers", workers, *args]  # the whole suite runs with N workers
        listen_flag = "--insecure-listen"
        if (tls if tls is not None else tls_enabled()) and not any(a.startswith("--tls-") for a in args):
            cert, key = tls_material()
            listen_flag = "--https-listen"
            args = ["--tls-cert", cert, "--tls-key", key, *args]
        elif any(a.startswith("--tls-cert") for a in args):
            listen_flag = "--https-listen"
        for _attempt in range(5):
            port = free_port(host or "0.0.0.0")
            mport = free_port("127.0.0.1") if metrics else None
            argv = [listen_flag, f"{host}:{port}",
                    f"--metrics-listen={'127.0.0.1:%d' % mport if mport else ''}", *args]
            r = Relay(self.binary, argv, relay_env(env, inherit_env), connect_host, port, mport, wrapper)
            r.expect_exit_code = expect_exit_code
            self.relays.append(r)
            r._spawn()
            try:
                r.wait_ready(ready_timeout)
                return r
            except RelayExited as e:
                last = e
                if e.returncode != 1 or not re.search(r"in use|EADDRINUSE|bind", e.stderr, re.I):
                    raise
                r.expect_exit_code = None  # lost the port race (exit 1): retried, not a failure
        raise last  # type: ignore[misc]

    def boot(self, args: Sequence[str], env: Optional[Mapping[str, Optional[str]]] = None,
             timeout: float = 10.0, inherit_env: bool = False, wrapper: Sequence[str] = ()) -> BootResult:
        """Run the relay with exactly `args` (nothing added) and wait for it to exit by
        itself, e.g. a configuration refusal. Fails if it is still running at `timeout`.
        wrapper: a command the relay runs under, e.g. ["prlimit", "--nofile=8:8"]."""
        proc = subprocess.Popen([str(RUN_UNPRIVILEGED), *wrapper, self.binary, *args], env=relay_env(env, inherit_env),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(5)
            raise AssertionError(f"relay did not exit within {timeout}s; stderr:\n{err.decode(errors='replace')}")
        return BootResult(proc.returncode, err.decode("utf-8", "replace"), out.decode("utf-8", "replace"))

    def stop_all(self) -> list:
        """Stop every relay; returns [(relay, exit code)] for teardown checks."""
        return [(r, r.stop()) for r in self.relays]


# --------------------------------------------------------------------------------------
# Node `ws` client


def wsclient_spec(url: str, headers: Optional[Mapping[str, str]], steps: Sequence[dict], timeout: float,
                  options: Optional[dict] = None) -> dict:
    """wsclient.mjs's input; a wss:// URL trusts the session's test certificate."""
    options = dict(options or {})
    named = _SERVER_NAMES.get(urllib.parse.urlsplit(url).hostname or "")
    if named:  # connect to its address; SNI, Host and the name check stay the name's
        options.setdefault("ca", Path(named[1]).read_text())
        options.setdefault("lookupAddress", named[0])
    elif url.startswith("wss:"):
        options.setdefault("ca", Path(tls_material()[0]).read_text())
    return {"url": url, "headers": dict(headers or {}), "steps": list(steps),
            "options": options, "timeout_ms": int(timeout * 1000) - 500}


def run_wsclient(url: str, headers: Optional[Mapping[str, str]] = None, steps: Sequence[dict] = (),
                 timeout: float = 15.0, options: Optional[dict] = None) -> dict:
    """Run tests/e2e/wsclient.mjs (npm ws) with a JSON script; return its JSON result:
    {"ok": bool, "error": str|None, "upgrade": {...}|None, "results": [...], "close": {...}}.
    See wsclient.mjs for the step vocabulary."""
    node = shutil.which("node")
    assert node, "node not found on PATH"
    spec = wsclient_spec(url, headers, steps, timeout, options)
    try:
        p = subprocess.run([node, str(WSCLIENT_MJS)], input=json.dumps(spec).encode(), capture_output=True,
                           timeout=timeout, cwd=str(E2E_DIR))
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"wsclient.mjs timed out after {timeout}s; stderr: {e.stderr!r}") from None
    out = p.stdout.decode("utf-8", "replace").strip().splitlines()
    assert out, f"wsclient.mjs printed nothing (rc={p.returncode}); stderr: {p.stderr.decode(errors='replace')}"
    return json.loads(out[-1])


# --------------------------------------------------------------------------------------
# Python `websockets` 10.4 (legacy asyncio client; the version Debian 12 ships)


def py_ws_connect(relay: Relay, path: str, headers: Mapping[str, str], **kw):
    """websockets.connect(...) for the relay; use as `async with py_ws_connect(...) as ws`.
    Keepalive pings are off (tests ping explicitly); compression is off unless asked.
    A User-Agent in `headers` replaces the library's own."""
    import websockets  # imported lazily: only the tests that use it need it

    hdrs = dict(headers)
    ua = None
    for k in list(hdrs):
        if k.lower() == "user-agent":
            ua = hdrs.pop(k)
    kw.setdefault("ping_interval", None)
    kw.setdefault("compression", None)
    kw.setdefault("open_timeout", 5)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("max_size", 2 * MAX_MESSAGE_BYTES)
    if ua is not None:
        kw["user_agent_header"] = ua
    if relay.tls:
        kw.setdefault("ssl", tls_client_context(relay.tls_cert))
    if relay.tls_server_name:  # a --domain relay: the URL names it, the socket goes to host
        kw.setdefault("sock", socket.create_connection((relay.host, relay.port), timeout=5))
        kw.setdefault("server_hostname", relay.tls_server_name)
    return websockets.connect(relay.ws_url(path), extra_headers=list(hdrs.items()), **kw)


def run_async(coro, timeout: float = 10.0):
    """Run a coroutine to completion with a hard timeout."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


# --------------------------------------------------------------------------------------
# protocol helpers: registry, routing envelopes, close notices, close codes (reference
# §2-§4). The tests of test_{routing,registry,limits,lifecycle,session}.py and
# test_metrics.py build on these; every wait is bounded.

LOCAL_IP = "127.0.0.1"

# the relay's close frames, (code, reason bytes) as RawConn.read_close returns them (§2.4)
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
    assert op == OP_TEXT, f"relay sent a non-text data message (opcode {op:#x}): {payload[:200]!r}"
    return payload


def ordered_json(payload: Union[bytes, str]) -> list:
    """A JSON object as a list of (key, value) pairs in wire order."""
    return json.loads(payload, object_pairs_hook=lambda pairs: pairs)


def wrapped(conn_id: str, frame: bytes) -> bytes:
    """{"conn_id":<conn_id>,"frame":<frame bytes verbatim>}: the exact bytes the binary
    must receive for a phone frame, and the routed-frame envelope a binary sends."""
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
    binary.send_frame(opcode, wrapped(conn_id, frame_raw))


def directive(binary: RawConn, conn_id: str, code: int, frame_raw: Optional[bytes] = None) -> None:
    """Send a close directive {"conn_id", "close_code"[, "frame": frame_raw verbatim]}."""
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
    """No byte arrives within `wait` and the connection stays open (then a barrier)."""
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


def drain_to_close(conn: RawConn, timeout: float) -> tuple:
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


async def wsclient_async(url: str, headers: Mapping[str, str], steps: Sequence[dict],
                         timeout: float = 15.0) -> dict:
    """Like run_wsclient, but as a coroutine (many Node clients run concurrently)."""
    node = shutil.which("node")
    assert node, "node not found on PATH"
    spec = wsclient_spec(url, headers, steps, timeout)
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


class PyWs:
    """A Python `websockets` 10.4 client running in its own thread and event loop, so it
    answers pings by itself (probe, heartbeat) while the test blocks elsewhere. Received
    messages land in a queue; when the connection ends, `closed` is set and
    close_code/close_reason are kept. Made by the `pyws` fixture (conftest.py), which
    shuts every one down at teardown."""

    def __init__(self, relay: Relay, path: str, headers: Mapping[str, str], open_timeout: float = 5.0, **kw):
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
        """Ping the relay and wait for the matching pong."""
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
        """Teardown: drop the connection if still open, join the thread."""
        if self.ws is not None and not self.closed.is_set():
            try:
                self._loop.call_soon_threadsafe(self.ws.transport.abort)
            except RuntimeError:
                pass
        self._thread.join(8)
