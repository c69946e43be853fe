"""--domain mode end to end against Pebble, a real ACME server (reference §1.1, §1.3,
§7.4; issue #13; ADR 14).

Pebble (Debian `pebble`) runs on loopback with a TLS certificate made here (the
package ships none), its DNS pointed at pebble-challtestsrv, which answers every A
query with 127.0.0.1, so Pebble's HTTP-01 validation really connects to the relay's
--http-listen port (Pebble's httpPort). Pebble's default 5% badNonce rejections stay
on: the relay must retry them. PEBBLE_VA_NOSLEEP=1 skips its random validation
delays. The domain is relay.test, the Host relayctl's requests carry by default.

Runs in one e2e stage only (1 worker, plaintext suite settings): nothing here depends
on the worker count, and these relays terminate TLS themselves.
"""

import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import relayctl

from relayctl import (RawConn, Relay, claim, proxy_v2_header, read_wrapped, register, relay_env, route,
                      read_text, unique_id, wait_until)

DOMAIN = "relay.test"
RUN_UID = int(os.environ.get("RELAY_RUN_UID", "65534"))

pytestmark = [
    pytest.mark.skipif(os.environ.get("RELAY_WORKERS", "1") != "1"
                       or os.environ.get("RELAY_TLS", "") not in ("", "0"),
                       reason="autocert runs in the 1-worker plaintext e2e stage only"),
    pytest.mark.skipif(shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None,
                       reason="Debian package pebble not installed (tools/deps.sh test installs it)"),
]


def free_port_all() -> int:
    """A port free on every address and below the ephemeral range: --http-listen binds
    ":PORT", which any busy client socket on loopback using that port as its ephemeral
    source would block (other test runs on this machine open thousands)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
                s6.bind(("::", port))
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s4:
                s4.bind(("0.0.0.0", port))
            return port
        except OSError:
            continue
    raise AssertionError("no free port below the ephemeral range")


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


class Pebble:
    """A Pebble ACME server and its challenge-test DNS, on free loopback ports."""

    def __init__(self, workdir: Path, http_port: int, validity_s: int, ca_pem: Path, cert: Path, key: Path,
                 nonce_reject_pct: int = None):
        self.dir = workdir
        self.port = free_port_all()
        self.mgmt_port = free_port_all()
        self.dns_port = free_port_all()
        self.chall_mgmt = free_port_all()
        self.ca_pem = ca_pem
        cfg = {"pebble": {"listenAddress": f"127.0.0.1:{self.port}",
                          "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                          "certificate": str(cert), "privateKey": str(key),
                          "httpPort": http_port, "tlsPort": free_port_all(),
                          "ocspResponderURL": "", "externalAccountBindingRequired": False,
                          "certificateValidityPeriod": validity_s}}
        conf = workdir / f"pebble-{self.port}.json"
        conf.write_text(json.dumps(cfg))
        self.chall = subprocess.Popen(
            ["pebble-challtestsrv", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-dns01", f"127.0.0.1:{self.dns_port}", "-management", f"127.0.0.1:{self.chall_mgmt}",
             "-defaultIPv6", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1")
        env.pop("PEBBLE_WFE_NONCEREJECT", None)  # keep Pebble's default 5% badNonce ...
        if nonce_reject_pct is not None:  # ... unless a test wants more
            env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject_pct)
        self.log = open(workdir / f"pebble-{self.port}.log", "wb")
        self.proc = subprocess.Popen(["pebble", "-config", str(conf), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        ctx = ssl.create_default_context(cafile=str(ca_pem))
        try:
            wait_until(lambda: self._answers(ctx) or self.proc.poll() is not None, 30, 0.05, "pebble directory")
        except TimeoutError:
            self.stop()
            raise AssertionError("pebble did not answer; its log:\n" + (workdir / f"pebble-{self.port}.log").read_text()[-2000:]) from None
        if self.proc.poll() is not None:
            self.stop()
            raise AssertionError("pebble exited; its log:\n" + (workdir / f"pebble-{self.port}.log").read_text()[-2000:])

    def _answers(self, ctx) -> bool:
        try:
            with urllib.request.urlopen(self.directory, context=ctx, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def root_pem(self) -> str:
        """The root Pebble signs with (made at its start): what a client must trust."""
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt_port}/roots/0", context=ctx, timeout=5) as r:
            return r.read().decode()

    def stop(self):
        for p in (self.proc, self.chall):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def pki():
    """A CA for Pebble's own HTTPS listener (the relay trusts it via --outbound-ca-file)."""
    d = Path(tempfile.mkdtemp(prefix="relay-e2e-acme-"))
    os.chmod(d, 0o755)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2", "-subj", "/CN=e2e pebble ca")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(d / "pebble.key"), "-out", str(d / "pebble.csr"), "-subj", "/CN=localhost")
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(d / "pebble.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-out", str(d / "pebble.pem"), "-days", "2", "-extfile", str(d / "ext"))
    os.chmod(d / "ca.pem", 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class AutocertRelay(Relay):
    """A --domain relay: clients connect to 127.0.0.1 with SNI relay.test and trust
    Pebble's root (set .root once the relay has a certificate)."""

    root: str = ""

    def client_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.root)
        ctx.check_hostname = True
        return ctx

    def connect(self, timeout: float = 5.0, sni: str = DOMAIN, **kw) -> RawConn:
        kw.pop("server_name", None)
        c = RawConn(self.host, self.port, timeout=timeout, **kw)
        c.sock = self.client_ctx().wrap_socket(c.sock, server_hostname=sni)
        self._conns.append(c)
        return c


def start_relay(pki: Path, cache: Path, directory: str, http_port: int, env=None, extra=(),
                cls=None) -> AutocertRelay:
    for _attempt in range(4):
        r = _start_relay(pki, cache, directory, http_port, env, extra, cls or AutocertRelay)
        if r is not None:
            return r
    raise AssertionError("the relay's listeners lost every bind race")


def _start_relay(pki: Path, cache: Path, directory: str, http_port: int, env, extra, cls):
    port, mport = free_port_all(), free_port_all()
    args = ["--domain", DOMAIN, "--cert-cache", str(cache), "--https-listen", f"127.0.0.1:{port}",
            "--http-listen", f":{http_port}", f"--metrics-listen=127.0.0.1:{mport}", "--acme-directory", directory,
            "--outbound-ca-file", str(pki / "ca.pem"), "--workers", "1", *extra]
    r = cls(os.environ.get("RELAY_BIN") or str(Path(__file__).resolve().parents[2] / "build/gcc/pyrycode-relay"),
                      args, relay_env(env), "127.0.0.1", port, mport)
    r._spawn()
    r.wait_log("starting", timeout=20)
    try:
        wait_until(lambda: _accepts(port) or not r.alive(), 20, 0.02, "the TLS listener")
    except TimeoutError:
        raise AssertionError("TLS listener not up; log:\n" + r.log_tail()) from None
    if not r.alive():
        r.stop()
        if r.returncode == 1 and f":{port}" in r.stderr_text() and "in use" in r.stderr_text():
            return None  # the TLS port was taken meanwhile: another one
        raise AssertionError(f"relay exited {r.returncode}; log:\n{r.log_tail()}")
    return r


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def cache_dir(name: str) -> Path:
    """A fresh parent owned by the relay's uid; the cache itself does not exist yet."""
    parent = Path(tempfile.mkdtemp(prefix=f"relay-e2e-{name}-"))
    os.chown(parent, RUN_UID, RUN_UID)
    return parent / "nested" / "certs"


def first_handshake(relay: AutocertRelay) -> bool:
    """The first handshake for the domain on a fresh cache starts the issuance and waits
    for its certificate, bounded by the 5 s handshake deadline (the reference's read
    deadline bounds Go's the same way): served when the CA answers in time (True),
    refused with no_certificate when it does not (False). Either way the relay obtains
    the certificate for the next one."""
    t0 = time.monotonic()
    try:
        relay.connect(timeout=10, sni=DOMAIN).close()
        print(f"first handshake served after {time.monotonic() - t0:.2f} s")
        return True
    except (ssl.SSLError, OSError):
        assert time.monotonic() - t0 >= 4.5, "refused before its handshake deadline"
        print(f"first handshake refused after {time.monotonic() - t0:.2f} s")
        return False


def handshake_fails(relay: AutocertRelay, sni: str) -> bool:
    try:
        relay.connect(timeout=3, sni=sni)
    except (ssl.SSLError, OSError):
        return True
    return False


def _healthz_ok(relay: AutocertRelay) -> bool:
    try:
        return relay.http("GET", "/healthz").status == 200
    except ConnectionRefusedError:
        return False  # the workers are not listening yet


def _cpu_seconds(relay: Relay) -> float:
    fields = Path(f"/proc/{relay.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(port: int, target: str) -> tuple:
    with RawConn("127.0.0.1", port, timeout=5) as c:
        r = c.request("GET", target, headers={"Connection": "close"})
        return r.status, r.body, r.header("Location")


def metric(relay: Relay, series: str) -> float:
    for line in relay.metrics_text().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} missing")


def serial_of(relay: AutocertRelay) -> int:
    c = relay.connect()
    der = c.sock.getpeercert(binary_form=True)
    c.close()
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number


def test_fresh_issuance_serves_wss_gates_host_and_restarts_from_cache(pki):
    http_port = free_port_all()
    pebble = Pebble(pki, http_port, 3600, pki / "ca.pem", pki / "pebble.pem", pki / "pebble.key")
    cache = cache_dir("fresh")
    relays = []
    try:
        # production mode, unprivileged: --domain starts (reference §7.3 step 9 passes)
        r = start_relay(pki, cache, pebble.directory, http_port, {"PYRYCODE_RELAY_PRODUCTION": "1"})
        relays.append(r)
        # cache created 0700 with its parents; the account key made once, 0600
        assert (cache.stat().st_mode & 0o777) == 0o700
        assert (cache.parent.stat().st_mode & 0o777) == 0o700
        assert ((cache / "acme_account+key").stat().st_mode & 0o777) == 0o600
        # nothing issued until a handshake asks: the first one starts the issuance (real
        # HTTP-01 against --http-listen) and waits for it, bounded
        time.sleep(0.3)
        assert not r.find_logs("acme certificate request started")
        r.root = pebble.root_pem()
        served = first_handshake(r)
        r.wait_log("acme certificate request started", timeout=5, stage="issuance")
        rec = r.wait_log("acme certificate obtained", timeout=30)
        assert int(rec["not_after"]) > time.time() + 3000
        assert ((cache / DOMAIN).stat().st_mode & 0o777) == 0o600
        # the name in another case, or with a trailing dot, is the same name
        for sni in ("RELAY.Test", DOMAIN + "."):
            ctx = ssl.create_default_context(cadata=r.root)
            ctx.check_hostname = False  # verified against the chain; the name is the test
            with socket.create_connection(("127.0.0.1", r.port), timeout=5) as sock:
                ctx.wrap_socket(sock, server_hostname=sni).close()
        # another name never gets a certificate, nor starts an issuance
        assert handshake_fails(r, "other.test")
        assert len(r.find_logs("acme certificate request started")) == 1

        # the next handshake is served, trusted through Pebble's root
        resp = r.http("GET", "/healthz")
        assert resp.status == 200 and json.loads(resp.body)["status"] == "ok"
        # §1.3 Host gate: 421, empty body, before anything else (also /healthz, /v1/*)
        for target, host in (("/healthz", "other.test"), ("/v1/server", "relay.test.evil"), ("/nope", "x")):
            resp = r.http("GET", target, headers={"Host": host})
            assert resp.status == 421 and resp.body == b"", (target, resp)
        assert r.http("GET", "/healthz", headers={"Host": "RELAY.test:443"}).status == 200

        # a routed session over wss:// (binary and phone both through TLS with the ACME certificate)
        sid = unique_id("acme")
        binary = claim(r, sid)
        phone, conn_id = register(r, sid)
        phone.send_text(b'{"hello":"over acme"}')
        cid, frame = read_wrapped(binary)
        assert cid == conn_id and frame == b'{"hello":"over acme"}'
        route(binary, conn_id, b'{"back":1}')
        assert read_text(phone) == b'{"back":1}'

        # the HTTP-01 listener: 404 for anything but a published token, never a redirect
        for target in ("/", "/healthz", "/.well-known/acme-challenge/", "/.well-known/acme-challenge/unknown",
                       "/v1/server"):
            status, body, location = http_get(http_port, target)
            assert status == 404 and location is None, (target, status)

        # our metrics
        assert metric(r, "pyrycode_relay_acme_issued_total") == 1
        assert metric(r, "pyrycode_relay_acme_last_success_timestamp_seconds") > time.time() - 60
        assert metric(r, "pyrycode_relay_tls_certificate_expiry_timestamp_seconds") == float(rec["not_after"])
        # the first handshake was served (Pebble answered within its deadline), or it
        # failed for want of the certificate: counted as such
        no_cert = metric(r, 'pyrycode_relay_tls_handshake_failures_total{reason="no_certificate"}')
        assert no_cert == (0 if served else 1), (served, no_cert)
        assert metric(r, 'pyrycode_relay_tls_handshake_failures_total{reason="sni"}') >= 1
        serial = serial_of(r)
        binary.close()
        phone.close()
        assert r.stop() == 0

        # restart with the ACME server gone: the cached certificate is served at once
        pebble.stop()
        r2 = start_relay(pki, cache, pebble.directory, http_port)
        relays.append(r2)
        r2.root = r.root
        r2.wait_log("serving cached certificate", timeout=5)
        wait_until(lambda: _healthz_ok(r2), 20, 0.05, "healthz over TLS with the cached certificate")
        assert serial_of(r2) == serial
        assert not r2.find_logs("acme certificate request started")
        log = r.stderr_text() + r2.stderr_text()
        key = (cache / "acme_account+key").read_text()
        assert key.split("\n")[1][:20] not in log  # no key material in the logs
        assert r2.stop() == 0
    finally:
        for x in relays:
            x.stop()
        pebble.stop()
        shutil.rmtree(cache.parent.parent, ignore_errors=True)


def test_short_lived_certificate_is_renewed_while_a_session_stays_open(pki):
    http_port = free_port_all()
    # 15 s certificates: renewal two thirds in, at ~10 s
    pebble = Pebble(pki, http_port, 15, pki / "ca.pem", pki / "pebble.pem", pki / "pebble.key")
    cache = cache_dir("renew")
    r = None
    try:
        r = start_relay(pki, cache, pebble.directory, http_port)
        r.root = pebble.root_pem()
        first_handshake(r)
        first = r.wait_log("acme certificate obtained", timeout=30)
        issued_at = time.time()
        sid = unique_id("renew")
        binary = claim(r, sid)
        phone, conn_id = register(r, sid)
        old_serial = serial_of(r)
        mark = r.log_mark()
        r.wait_log("acme certificate request started", since=mark, timeout=20, stage="renewal")
        second = r.wait_log("acme certificate obtained", since=mark, timeout=20)
        renewed_after = time.time() - issued_at
        assert 4 <= renewed_after <= 20, renewed_after
        assert int(second["not_after"]) > int(first["not_after"])
        # the session that began with the old certificate still routes both ways
        phone.send_text(b'{"after":"renewal"}')
        cid, frame = read_wrapped(binary)
        assert cid == conn_id and frame == b'{"after":"renewal"}'
        route(binary, conn_id, b'{"ok":true}')
        assert read_text(phone) == b'{"ok":true}'
        # new handshakes get the new certificate
        assert serial_of(r) != old_serial
        assert metric(r, "pyrycode_relay_acme_issued_total") == 2

        # the CA goes away: the next renewal fails, is counted by stage, and is retried
        # with back-off (5 s, then 10 s), not in a loop; the served certificate stays
        pebble.stop()
        mark = r.log_mark()
        rec = r.wait_log("acme certificate request failed", since=mark, timeout=20)
        failed_at = time.monotonic()
        assert "refused" in rec["err"], rec
        cpu0 = _cpu_seconds(r)
        time.sleep(3)
        assert _cpu_seconds(r) - cpu0 < 0.5, "the renewal back-off spins"
        assert len(r.find_logs("acme certificate request failed", since=mark)) == 1
        r.wait_log("acme certificate request started", since=r.log_mark(), timeout=8, stage="renewal")
        assert time.monotonic() - failed_at >= 4.5  # AUTOCERT_BACKOFF_MIN_MS
        failures = sum(metric(r, f'pyrycode_relay_acme_failures_total{{stage="{st}"}}')
                       for st in ("directory", "nonce", "account", "order"))
        assert failures >= 1
        phone.send_text(b'{"still":"open"}')
        assert read_wrapped(binary)[1] == b'{"still":"open"}'
        binary.close()
        phone.close()
        assert r.stop() == 0
    finally:
        if r is not None:
            r.stop()
        pebble.stop()
        shutil.rmtree(cache.parent.parent, ignore_errors=True)


def test_bad_nonce_rejections_are_retried(pki):
    # 30% of good nonces rejected: an issuance signs about a dozen requests, so without
    # retrying badNonce it would fail with probability ~99%; with at most 9 tries per
    # request it fails with ~0.03%.
    http_port = free_port_all()
    pebble = Pebble(pki, http_port, 3600, pki / "ca.pem", pki / "pebble.pem", pki / "pebble.key",
                    nonce_reject_pct=30)
    cache = cache_dir("nonce")
    r = None
    try:
        r = start_relay(pki, cache, pebble.directory, http_port)
        r.root = pebble.root_pem()
        first_handshake(r)
        r.wait_log("acme certificate obtained", timeout=30)
        assert not r.find_logs("acme certificate request failed")
        assert metric(r, "pyrycode_relay_acme_issued_total") == 1
        assert r.http("GET", "/healthz").status == 200
        assert r.stop() == 0
    finally:
        if r is not None:
            r.stop()
        pebble.stop()
        shutil.rmtree(cache.parent.parent, ignore_errors=True)


class ProxiedAutocertRelay(AutocertRelay):
    """Every connection starts with a PROXY v2 header from 203.0.113.7 (a TCP balancer
    in front, as the Go relay's Fly deployment)."""

    def connect(self, timeout: float = 5.0, sni: str = DOMAIN, **kw) -> RawConn:
        c = RawConn(self.host, self.port, timeout=timeout)
        c.sock.sendall(proxy_v2_header(src="203.0.113.7", src_port=41000, dst="127.0.0.1", dst_port=self.port))
        c.sock = self.client_ctx().wrap_socket(c.sock, server_hostname=sni)
        self._conns.append(c)
        return c


def test_first_handshake_without_a_ca_is_refused_at_its_deadline(pki):
    # the CA does not answer: the first handshake waits for the certificate it asked for
    # until its 5 s deadline, then fails (no_certificate); the worker serves meanwhile
    http_port = free_port_all()
    cache = cache_dir("noca")
    r = None
    try:
        r = start_relay(pki, cache, f"https://127.0.0.1:{free_port_all()}/dir", http_port)
        r.root = (pki / "ca.pem").read_text()
        waiter = threading.Thread(target=lambda: setattr(r, "first_served", first_handshake(r)))
        waiter.start()
        time.sleep(1.0)
        # the same worker answers while that handshake waits
        assert metric(r, 'pyrycode_relay_tls_handshake_failures_total{reason="no_certificate"}') == 0
        assert handshake_fails(r, "other.test")
        waiter.join(20)
        assert r.first_served is False
        assert metric(r, 'pyrycode_relay_tls_handshake_failures_total{reason="no_certificate"}') == 1
        assert r.stop() == 0
    finally:
        if r is not None:
            r.stop()
        shutil.rmtree(cache.parent.parent, ignore_errors=True)


def test_domain_mode_behind_a_proxy_v2_balancer(pki):
    # the Go relay's production line on Fly: --domain with --https-proxy-protocol; the
    # HTTP-01 listener takes no header, the TLS listener requires one
    http_port = free_port_all()
    pebble = Pebble(pki, http_port, 3600, pki / "ca.pem", pki / "pebble.pem", pki / "pebble.key")
    cache = cache_dir("proxied")
    r = None
    try:
        r = start_relay(pki, cache, pebble.directory, http_port, extra=["--https-proxy-protocol"],
                        cls=ProxiedAutocertRelay)
        r.root = pebble.root_pem()
        first_handshake(r)
        r.wait_log("acme certificate obtained", timeout=30)
        assert r.http("GET", "/healthz").status == 200
        sid = unique_id("proxied")
        mark = r.log_mark()
        binary = claim(r, sid)
        assert r.find_logs("server_claimed", since=mark, server_id=sid)[0]["remote"] == "203.0.113.7"
        binary.close()
        # without the header: closed unserved (test_proxy_v2.py checks the zero bytes)
        with socket.create_connection(("127.0.0.1", r.port), timeout=5) as sock:
            ctx = r.client_ctx()
            with pytest.raises((ssl.SSLError, OSError)):
                ctx.wrap_socket(sock, server_hostname=DOMAIN)
        assert r.stop() == 0
    finally:
        if r is not None:
            r.stop()
        pebble.stop()
        shutil.rmtree(cache.parent.parent, ignore_errors=True)


def test_binary_upgrade_hands_the_acme_listener_over(pki):
    # ADR 0018 in --domain mode: the successor takes every listener (the HTTP-01 one
    # too: it binds ":PORT" without SO_REUSEPORT, so a second bind would fail) and serves
    # the cached certificate; the predecessor drains and exits 0
    http_port = free_port_all()
    pebble = Pebble(pki, http_port, 3600, pki / "ca.pem", pki / "pebble.pem", pki / "pebble.key")
    cache = cache_dir("handover")
    sock = str(cache.parent.parent / "handover.sock")
    old = new = None
    try:
        old = start_relay(pki, cache, pebble.directory, http_port, extra=["--handover-socket", sock])
        old.root = pebble.root_pem()
        first_handshake(old)
        old.wait_log("acme certificate obtained", timeout=30)
        serial = serial_of(old)
        new = AutocertRelay(old.binary, old.args, old.env, old.host, old.port, old.metrics_port)
        new.root = old.root
        new._spawn()
        new.wait_log("took over listeners", timeout=20)
        new.wait_log("serving cached certificate", timeout=20)
        assert old.wait_exit(30) == 0
        assert serial_of(new) == serial
        assert new.http("GET", "/healthz").status == 200
        assert http_get(http_port, "/")[0] == 404  # the HTTP-01 listener, now the successor's
        assert new.stop() == 0
    finally:
        for x in (old, new):
            if x is not None:
                x.stop()
        pebble.stop()
        shutil.rmtree(cache.parent.parent, ignore_errors=True)


class PrivilegedPortRelay(AutocertRelay):
    """Started as the relay's unprivileged uid holding CAP_NET_BIND_SERVICE alone (what
    the systemd unit's AmbientCapabilities gives), not through run-unprivileged.sh."""

    def _spawn(self) -> None:
        self.wrapper = []
        cmd = ["setpriv", f"--reuid={RUN_UID}", f"--regid={RUN_UID}", "--clear-groups",
               "--inh-caps=-all,+net_bind_service", "--ambient-caps=+net_bind_service", "--"]
        real = relayctl.RUN_UNPRIVILEGED
        relayctl.RUN_UNPRIVILEGED = Path(cmd[0])
        self.wrapper = cmd[1:]
        try:
            super()._spawn()
        finally:
            relayctl.RUN_UNPRIVILEGED = real


def _port_in_use(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
            s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the relay: TIME_WAIT is no owner
            s6.bind(("::", port))
        return False
    except OSError:
        return True


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the relay CAP_NET_BIND_SERVICE")
def test_production_mode_on_ports_443_and_80_with_only_cap_net_bind_service(pki):
    if _port_in_use(80) or _port_in_use(443):
        pytest.skip("port 80 or 443 is taken on this machine")
    pebble = Pebble(pki, 80, 3600, pki / "ca.pem", pki / "pebble.pem", pki / "pebble.key")
    cache = cache_dir("prod")
    r = None
    try:
        mport = free_port_all()
        args = ["--domain", DOMAIN, "--cert-cache", str(cache), f"--metrics-listen=127.0.0.1:{mport}",
                "--acme-directory", pebble.directory, "--outbound-ca-file", str(pki / "ca.pem"), "--workers", "1"]
        r = PrivilegedPortRelay(os.environ.get("RELAY_BIN") or str(Path(__file__).resolve().parents[2] / "build/gcc/pyrycode-relay"),
                                args, relay_env({"PYRYCODE_RELAY_PRODUCTION": "1"}), "127.0.0.1", 443, mport)
        r._spawn()
        r.wait_log("starting", timeout=20)
        wait_until(lambda: _accepts(443) or not r.alive(), 20, 0.02, "the TLS listener on 443")
        assert r.alive(), r.log_tail()
        status = Path(f"/proc/{r.proc.pid}/status").read_text()
        assert "CapEff:\t0000000000000400" in status and f"Uid:\t{RUN_UID}" in status
        r.root = pebble.root_pem()
        first_handshake(r)
        r.wait_log("acme certificate obtained", timeout=30)  # HTTP-01 on port 80
        assert r.http("GET", "/healthz").status == 200
        assert http_get(80, "/")[0] == 404
        assert r.stop() == 0
    finally:
        if r is not None:
            r.stop()
        pebble.stop()
        shutil.rmtree(cache.parent.parent, ignore_errors=True)


def _boot(relay_factory, cache, *extra, env=None):
    return relay_factory.boot(["--check", "--domain", DOMAIN, "--cert-cache", str(cache), "--https-listen", ":18443",
                               "--http-listen", ":18080", *extra], env=env)


def _last(res) -> dict:
    recs = [x for x in res.log_records if x.get("level") in ("ERROR", "INFO")]
    return recs[-1] if recs else {}


def test_cache_directory_policy_and_boot_refusals(relay_factory):
    base = Path(tempfile.mkdtemp(prefix="relay-e2e-cachedir-"))
    os.chmod(base, 0o755)
    try:
        # ours with group/other bits: tightened to 0700, logged, the boot goes on
        mine = base / "mine"
        mine.mkdir(mode=0o755)
        os.chmod(mine, 0o755)
        os.chown(mine, RUN_UID, RUN_UID)
        res = _boot(relay_factory, mine)
        assert res.returncode == 0, res.stderr
        rec = [x for x in res.log_records if x.get("msg") == "tightened cert cache dir perms"]
        assert rec and rec[0]["path"] == str(mine) and rec[0]["from"] == "0755" and rec[0]["to"] == "0700"
        assert (mine.stat().st_mode & 0o777) == 0o700
        assert "cert-cache: " + str(mine) in res.stdout
        # ours and 0700: nothing to say
        res = _boot(relay_factory, mine)
        assert res.returncode == 0 and "tightened" not in res.stderr
        # someone else's (root's) with group/other bits: refused, exit 1, untouched
        theirs = base / "theirs"
        theirs.mkdir()
        os.chmod(theirs, 0o750)
        res = _boot(relay_factory, theirs)
        assert res.returncode == 1, res.stderr
        rec = [x for x in res.log_records if x.get("msg") == "autocert setup failed"][0]
        assert "must be 0700" in rec["err"] and rec["fix"]
        assert (theirs.stat().st_mode & 0o777) == 0o750
        # not a directory: refused, exit 1
        f = base / "file"
        f.write_text("x")
        res = _boot(relay_factory, f)
        assert res.returncode == 1 and "not a directory" in res.stderr
        # a path the relay's user cannot create: refused, exit 1
        res = _boot(relay_factory, Path("/proc/no-such-dir/certs"))
        assert res.returncode == 1 and "autocert setup failed" in res.stderr
        # §7.4 order: the cache refusal (exit 1) comes before the listener address check (exit 2)
        res = relay_factory.boot(["--domain", DOMAIN, "--cert-cache", str(theirs), "--https-listen", "nope"])
        assert res.returncode == 1, res.stderr
        res = _boot(relay_factory, mine, "--http-listen", "localhost:80")
        assert res.returncode == 2 and "invalid listener address" in res.stderr
        # not a DNS name: exit 2 with a fix
        res = relay_factory.boot(["--check", "--domain", "relay.test/x", "--cert-cache", str(mine)])
        assert res.returncode == 2, res.stderr
        rec = [x for x in res.log_records if x.get("msg") == "refusing to start: invalid --domain"][0]
        assert rec["fix"]
        # autocert flags with --insecure-listen: exit 2 (§1.1)
        res = relay_factory.boot(["--insecure-listen", "127.0.0.1:18081", "--http-listen", ":80"])
        assert res.returncode == 2
        # production mode with --domain passes every check (unprivileged)
        res = _boot(relay_factory, mine, env={"PYRYCODE_RELAY_PRODUCTION": "1"})
        assert res.returncode == 0, res.stderr
        assert "acme-directory: https://acme-v02.api.letsencrypt.org/directory" in res.stdout
        # an https:// ACME directory only
        res = _boot(relay_factory, mine, "--acme-directory", "http://127.0.0.1:1/dir")
        assert res.returncode == 2
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------
# the protocol suite over the ACME certificate


PROTOCOL_MODULES = ("test_upgrade", "test_ws", "test_routing", "test_registry", "test_limits")


def _protocol_tests() -> list:
    """The protocol suite's tests that need nothing but a relay as started by default and
    a server-id (the `relay, server_id` fixtures, no parameters): each runs unchanged
    below against a --domain relay, over TLS with the certificate Pebble issued, its
    clients trusting Pebble's root and sending the domain as SNI and Host."""
    import importlib
    import inspect
    out = []
    for mod in PROTOCOL_MODULES:
        m = importlib.import_module(mod)
        for name, fn in vars(m).items():
            if (name.startswith("test_") and inspect.isfunction(fn) and fn.__module__ == m.__name__
                    and list(inspect.signature(fn).parameters) == ["relay", "server_id"]
                    and not getattr(fn, "pytestmark", None)):
                out.append(pytest.param(fn, id=f"{mod}.{name}"))
    return out


@pytest.fixture(scope="module")
def issued(pki):
    """Pebble, and a certificate cache it filled once (real HTTP-01): every relay below
    starts from it and serves the cached certificate at once."""
    http_port = free_port_all()
    pebble = Pebble(pki, http_port, 3600, pki / "ca.pem", pki / "pebble.pem", pki / "pebble.key")
    cache = cache_dir("suite")
    try:
        r = start_relay(pki, cache, pebble.directory, http_port)
        r.root = pebble.root_pem()
        first_handshake(r)
        r.wait_log("acme certificate obtained", timeout=30)
        assert r.stop() == 0
        yield pebble, cache, http_port, r.root
    finally:
        pebble.stop()
        shutil.rmtree(cache.parent.parent, ignore_errors=True)


@pytest.mark.parametrize("proto_test", _protocol_tests())
def test_protocol_suite_over_the_acme_certificate(pki, issued, proto_test):
    pebble, cache, http_port, root = issued
    r = start_relay(pki, cache, pebble.directory, http_port)
    r.root = root
    # the suite's library clients (Python websockets, Node ws): wss://relay.test:PORT,
    # connected to 127.0.0.1, trusting Pebble's root
    r.tls_server_name = DOMAIN
    r.tls_cert = str(cache.parent.parent / "pebble-root.pem")
    Path(r.tls_cert).write_text(root)
    r.tls = True
    try:
        r.wait_log("serving cached certificate", timeout=10)
        proto_test(r, unique_id(proto_test.__name__[5:40]))
    finally:
        code = r.stop()
    assert code == 0, r.log_tail()
