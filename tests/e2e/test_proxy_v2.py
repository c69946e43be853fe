"""--https-proxy-protocol (reference §1.4): every connection on the TLS listener must
begin with a PROXY protocol v2 header, whose source becomes the client address.

- HAProxy in TCP mode with `send-proxy-v2` in front (TLS passes through it to the relay):
  the client's own address (127.45.67.89, not HAProxy's 127.0.0.1) reaches the logs'
  `remote`, the per-IP rate limiter (a second client address has its own bucket) and
  the handoff to the server-id's worker.
- Straight to the relay: IPv6, IPv4-mapped and TLV-carrying headers; a header split
  byte by byte; a header and the ClientHello in one TCP segment.
- Refusals, each closed with zero bytes received and counted by reason: no header (a
  TLS ClientHello, an HTTP request), v1, LOCAL, UNSPEC, UDP; and a header that arrives
  after 5 s (one wait, shared by a silent connection and a half-sent header).
- --check reports it in certificate-files mode; the `starting` line says so.

TLS-independent: it always terminates TLS itself, so it runs in one stage of `make
test` only, the one over TLS (RELAY_TLS=1)."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from relayctl import (RawConn, build_upgrade, free_port, proxy_v2_header, server_headers, tls_client_context,
                      tls_enabled, tls_material, unique_id, wait_until)

pytestmark = pytest.mark.skipif(not tls_enabled(), reason="runs in the TLS stage only (RELAY_TLS=1)")

CLIENT_A = "127.45.67.89"  # the clients' own addresses, distinct from HAProxy's 127.0.0.1
CLIENT_B = "127.45.67.90"
BURST = 3
PROXY_HEADER_TIMEOUT_S = 5.0  # reference §1.4 (PROXY_HEADER_TIMEOUT_MS)


def scrape(relay) -> dict:
    out = {}
    for line in relay.metrics_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def rejects(relay) -> dict:
    prefix = 'pyrycode_relay_proxy_protocol_rejects_total{reason="'
    return {k[len(prefix):-2]: v for k, v in scrape(relay).items() if k.startswith(prefix)}


def start_relay(relay_factory, *extra):
    return relay_factory.start(args=["--https-proxy-protocol", "--rate-limit-burst", str(BURST), *extra],
                               metrics=True, tls=True)


def status_of(conn: RawConn, target: str = "/v1/server", headers=None) -> int:
    """One request on conn (Connection: close): its status."""
    hdrs = {"Connection": "close", **(headers or {})}
    return conn.request("GET", target, headers=hdrs).status


class HAProxy:
    """HAProxy (Debian's) in TCP mode: TLS passes through, `send-proxy-v2` on the way."""

    def __init__(self, tmp_path, relay_port: int):
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert os.access(haproxy, os.X_OK), "haproxy missing: tools/deps.sh test installs it"
        self.port = free_port()
        cfg = tmp_path / "haproxy-proxy-v2.cfg"
        cfg.write_text(f"""global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tls_in
    bind 127.0.0.1:{self.port}
    default_backend relay
backend relay
    server relay1 127.0.0.1:{relay_port} send-proxy-v2
""")
        self.log = open(tmp_path / "haproxy-proxy-v2.log", "wb")
        self.proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_until(self._listening, 15, 0.05, "HAProxy to listen")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def connect(self, source: str) -> RawConn:
        return RawConn("127.0.0.1", self.port, source=source, tls=tls_client_context(tls_material()[0]))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture
def haproxy_for():
    made = []

    def make(tmp_path, relay_port):
        h = HAProxy(tmp_path, relay_port)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def test_haproxy_send_proxy_v2_gives_the_client_address_to_logs_and_rate_limiter(relay_factory, haproxy_for,
                                                                                tmp_path):
    relay = start_relay(relay_factory)
    proxy = haproxy_for(tmp_path, relay.port)
    mark = relay.log_mark()
    before = rejects(relay)  # HAProxy has no health check: nothing reaches the relay headerless

    # A binary through HAProxy: its claim is logged with the client's address, also when
    # another worker owns the server-id (the handoff carries it).
    sids = [unique_id("pp2") for _ in range(4)]
    binaries = []
    for sid in sids[:2]:
        b = proxy.connect(CLIENT_A)
        b.upgrade("/v1/server", server_headers(sid))
        binaries.append(b)
        assert relay.wait_log("server_claimed", since=mark, server_id=sid)["remote"] == CLIENT_A
    # Two upgrades spent two of CLIENT_A's three tokens: one more passes the limiter
    # (the header gate answers 400), the next is refused 429 and logged under its address.
    assert status_of(proxy.connect(CLIENT_A)) == 400
    assert status_of(proxy.connect(CLIENT_A)) == 429
    assert relay.wait_log("rate_limited", since=mark)["remote"] == f'"{CLIENT_A}"'
    # CLIENT_B has its own bucket, although HAProxy dials the relay from 127.0.0.1 for both.
    b = proxy.connect(CLIENT_B)
    b.upgrade("/v1/server", server_headers(sids[2]))
    assert relay.wait_log("server_claimed", since=mark, server_id=sids[2])["remote"] == CLIENT_B
    assert not relay.find_logs("rate_limited", since=mark, remote=f'"{CLIENT_B}"')
    assert not [r for r in relay.log_records(mark) if r.get("remote") in ("127.0.0.1", '"127.0.0.1"')]
    assert rejects(relay) == before
    for c in binaries + [b]:
        c.close()


def _claim_direct(relay, header: bytes, sid: str) -> dict:
    mark = relay.log_mark()
    c = relay.connect(preamble=header)
    c.upgrade("/v1/server", server_headers(sid))
    rec = relay.wait_log("server_claimed", since=mark, server_id=sid)
    c.close()
    return rec


def test_direct_headers_ipv6_mapped_and_tlvs(relay_factory):
    relay = start_relay(relay_factory)
    assert _claim_direct(relay, proxy_v2_header("2001:db8::7", 1234, "2001:db8::1", 443),
                         unique_id("pp2v6"))["remote"] == "2001:db8::7"
    # an IPv4 client behind an IPv6 proxy is a.b.c.d, as Go prints it
    assert _claim_direct(relay, proxy_v2_header("::ffff:127.1.2.3", 1, "::1", 443),
                         unique_id("pp2map"))["remote"] == "127.1.2.3"
    # TLVs (a unique-id and a NOOP) are skipped
    tlvs = bytes([0x05, 0, 4]) + b"abcd" + bytes([0x04, 0, 3, 0, 0, 0])
    assert _claim_direct(relay, proxy_v2_header("127.9.9.9", 2, tlvs=tlvs), unique_id("pp2tlv"))["remote"] == \
        "127.9.9.9"
    assert all(v == 0 for v in rejects(relay).values())


def test_header_split_byte_by_byte_then_one_segment_with_the_client_hello(relay_factory):
    relay = start_relay(relay_factory)
    ctx = tls_client_context(relay.tls_cert)
    header = proxy_v2_header("127.8.8.8", 4444)
    # byte by byte: every piece is its own segment (TCP_NODELAY), so its own receive
    with socket.create_connection((relay.host, relay.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(header)):
            s.sendall(header[i:i + 1])
            time.sleep(0.005)
        with ctx.wrap_socket(s, server_hostname=relay.host) as t:
            assert _get_status(t) == 200
    # the header and the ClientHello in one segment: TCP_CORK holds the header until the
    # ClientHello joins it (the kernel sends a corked segment after 200 ms at the latest)
    sid = unique_id("pp2cork")
    mark = relay.log_mark()
    with socket.create_connection((relay.host, relay.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        s.sendall(header)
        with ctx.wrap_socket(s, server_hostname=relay.host) as t:
            t.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            t.sendall(build_upgrade("/v1/server", server_headers(sid)))
            assert _read_head(t).startswith(b"HTTP/1.1 101 ")
            assert relay.wait_log("server_claimed", since=mark, server_id=sid)["remote"] == "127.8.8.8"


def _read_head(t) -> bytes:
    data = b""
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in data:
        assert time.monotonic() < deadline, data
        chunk = t.recv(4096)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def _get_status(t) -> int:
    t.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n")
    return int(_read_head(t).split(b" ", 2)[1])


def _client_hello() -> bytes:
    """A real TLS ClientHello (Python's ssl over memory buffers)."""
    out = ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_refusals_close_with_zero_bytes(relay_factory):
    relay = start_relay(relay_factory)
    mark = relay.log_mark()
    cases = [  # (what, first bytes, reason counted)
        ("no header: a TLS ClientHello", _client_hello(), "missing"),
        ("no header: plaintext HTTP", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "missing"),
        ("v1", b"PROXY TCP4 127.45.67.89 127.0.0.1 40000 443\r\n", "v1"),
        ("LOCAL", proxy_v2_header(ver_cmd=0x20), "local"),
        ("UNSPEC", proxy_v2_header(family=0x00), "unspec"),
        ("UDP over IPv4", proxy_v2_header(family=0x12), "udp"),
    ]
    want = {}
    for what, first, reason in cases:
        c = RawConn(relay.host, relay.port)
        t0 = time.monotonic()
        c.send(first + _client_hello())
        try:
            c.wait_closed(timeout=3)  # fails on any byte received
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None
        assert time.monotonic() - t0 < 2, f"{what}: refused late (not at its first bytes)"
        want[reason] = want.get(reason, 0) + 1
    got = rejects(relay)
    assert {k: v for k, v in got.items() if v} == want, got
    # refusals are counted, never logged (reference §9)
    assert not [r for r in relay.log_records(mark) if r.get("level") in ("WARN", "ERROR")]
    assert relay.connect().request("GET", "/healthz").status == 200  # a good header still works


def test_header_after_5s_is_too_late(relay_factory):
    relay = start_relay(relay_factory)
    silent = RawConn(relay.host, relay.port)
    half = RawConn(relay.host, relay.port)
    header = proxy_v2_header("127.45.67.89", 5555)
    half.send(header[:10])  # a header begun does not extend the deadline
    t0 = time.monotonic()
    waited = half.wait_closed(timeout=PROXY_HEADER_TIMEOUT_S + 3)
    silent.wait_closed(timeout=1)
    assert PROXY_HEADER_TIMEOUT_S - 1 <= time.monotonic() - t0 <= PROXY_HEADER_TIMEOUT_S + 2, waited
    # what comes after the deadline finds the connection gone: still nothing received
    half.send_quietly(header[10:] + _client_hello())
    assert not half.buf
    got = rejects(relay)
    assert got["timeout"] == 2, got
    assert sum(got.values()) == 2, got


def test_check_and_starting_line_report_it(relay_factory):
    cert, key = tls_material()
    port = free_port()
    res = relay_factory.boot(["--check", "--https-listen", f"127.0.0.1:{port}", "--tls-cert", cert,
                              "--tls-key", key, "--https-proxy-protocol"])
    assert res.returncode == 0, res
    report = dict(l.split(": ", 1) for l in res.stdout.splitlines()[1:])
    assert report["mode"].startswith("tls"), report
    assert report["https-listen"] == f"127.0.0.1:{port} (PROXY protocol v2 required)"
    assert report["client address"] == "PROXY protocol source"
    relay = start_relay(relay_factory)
    assert relay.wait_log("starting")["https_proxy_protocol"] == "true"
