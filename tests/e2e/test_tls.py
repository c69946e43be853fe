"""TLS termination from certificate files (issue #12): what only TLS has.

The protocol suite itself runs over TLS with RELAY_TLS=1 (make test does); these tests
cover the TLS mode's own behaviour: every protocol version and cipher the relay serves,
an HTTP request on the TLS port, handshake failures and their counts, boot refusals,
and SIGHUP swapping the certificate while connections stay up.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from relayctl import (OP_TEXT, claim, read_wrapped, register, route, read_text, tls_client_context, tls_material,
                      wait_until)

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def scrape(relay) -> dict:
    out = {}
    for line in relay.metrics_text().splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def make_cert(d: Path, name: str, key: str = "ec") -> tuple:
    """A self-signed certificate and key under d (openssl); names localhost, 127.0.0.1.
    (Expired and not-yet-valid certificates are refused the same way at load: the unit
    tests of transport/tls make those, with dates openssl 3.0's req cannot set.)"""
    cert, keyf = d / f"{name}.pem", d / f"{name}.key"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key == "ec" else ["-newkey", "rsa:2048"]
    argv = ["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", str(keyf), "-out", str(cert),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "2"]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    os.chmod(cert, 0o644)
    os.chmod(keyf, 0o644)
    return str(cert), str(keyf)


@pytest.fixture
def certdir():
    # not under pytest's tmp_path: its parents are root's alone, and the relay runs as nobody
    d = Path(tempfile.mkdtemp(prefix="relay-tls-test-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start_tls(relay_factory, cert, key, *extra, metrics=True):
    return relay_factory.start(metrics=metrics, args=["--tls-cert", cert, "--tls-key", key, *extra])


def openssl_get(relay, *tls_args) -> str:
    """GET /healthz with `openssl s_client` (an independent TLS stack); its output."""
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{relay.port}", "-servername", "localhost",
                        "-CAfile", tls_material()[0], "-quiet", "-ign_eof", *tls_args],
                       input=b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                       capture_output=True, timeout=20)
    return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


@pytest.mark.parametrize("tls_args", [
    ("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"),
    ("-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"),
    ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"),
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"),
], ids=lambda a: f"{a[0][1:]}-{a[2]}")
def test_every_version_and_cipher_serves(relay_factory, tls_args):
    cert, key = tls_material()
    relay = start_tls(relay_factory, cert, key)
    out = openssl_get(relay, *tls_args)
    assert "HTTP/1.1 200 OK" in out and '"status":"ok"' in out, out[-2000:]
    version = "1.3" if tls_args[0] == "-tls1_3" else "1.2"
    s = scrape(relay)
    assert s[f'pyrycode_relay_tls_handshakes_total{{version="{version}"}}'] >= 1
    # this kernel has no kTLS: the records stayed in user space, and the metric says why
    assert s['pyrycode_relay_tls_connections_total{path="userspace",reason="no_kernel_tls"}'] >= 1


def test_rsa_certificate_and_tls12_cipher_families(relay_factory, certdir):
    cert, key = make_cert(certdir, "rsa", key="rsa")
    relay = start_tls(relay_factory, cert, key)
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{relay.port}", "-CAfile", cert, "-quiet",
                        "-ign_eof", "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
                       input=b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       capture_output=True, timeout=20)
    assert b"HTTP/1.1 200 OK" in p.stdout, p.stderr[-2000:]
    # CBC suites are not served (every suite served can go to the kernel)
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{relay.port}", "-CAfile", cert,
                        "-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"], input=b"", capture_output=True, timeout=20)
    assert p.returncode != 0
    wait_until(lambda: scrape(relay)['pyrycode_relay_tls_handshake_failures_total{reason="no_shared_cipher"}'] >= 1,
               5, what="the refused handshake counted")


def test_http_request_on_the_tls_port_gets_gos_400(relay_factory):
    cert, key = tls_material()
    relay = start_tls(relay_factory, cert, key)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    assert got == b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    assert scrape(relay)['pyrycode_relay_tls_handshake_failures_total{reason="plaintext_http"}'] == 1


def test_handshake_deadline_and_garbage_are_counted(relay_factory):
    cert, key = tls_material()
    relay = start_tls(relay_factory, cert, key)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=8) as s:
        s.sendall(b"\x16\x03\x01")  # a handshake record begins, and nothing more comes
        t0 = time.monotonic()
        assert s.recv(100) == b""
        took = time.monotonic() - t0
    assert 4.0 <= took <= 7.0, f"closed after {took:.1f} s; the handshake bound is 5 s"
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
        s.sendall(b"\x00" * 64)
        s.settimeout(5)
        try:
            while s.recv(100):
                pass
        except ConnectionResetError:
            pass
    s = scrape(relay)
    assert s['pyrycode_relay_tls_handshake_failures_total{reason="timeout"}'] == 1
    assert s['pyrycode_relay_tls_handshake_failures_total{reason="not_tls"}'] == 1


@pytest.mark.parametrize("case", ["key-mismatch", "unreadable", "not-pem", "no-key-flag", "with-insecure-listen"])
def test_boot_refusals(relay_factory, certdir, case):
    good_cert, good_key = make_cert(certdir, "good")
    if case == "not-pem":
        (certdir / "junk.pem").write_text("not a certificate\n")
        os.chmod(certdir / "junk.pem", 0o644)
        args = ["--tls-cert", str(certdir / "junk.pem"), "--tls-key", good_key]
    elif case == "key-mismatch":
        other_cert, other_key = make_cert(certdir, "other")
        args = ["--tls-cert", good_cert, "--tls-key", other_key]
    elif case == "unreadable":
        args = ["--tls-cert", str(certdir / "missing.pem"), "--tls-key", good_key]
    elif case == "no-key-flag":
        args = ["--tls-cert", good_cert]
    else:
        args = ["--tls-cert", good_cert, "--tls-key", good_key, "--insecure-listen", "127.0.0.1:1"]
    r = relay_factory.boot(["--https-listen", "127.0.0.1:8443", *args, "--metrics-listen="])
    assert r.returncode == 2, r.log_lines()
    recs = [x for x in r.log_records if x.get("level") == "ERROR"]
    assert recs and recs[0]["msg"].startswith("refusing to start") and recs[0].get("fix"), recs
    if case in ("key-mismatch", "unreadable", "not-pem"):
        want = {"key-mismatch": "key_mismatch", "unreadable": "unreadable", "not-pem": "bad_pem"}[case]
        assert recs[0]["msg"] == "refusing to start: invalid TLS certificate" and recs[0]["reason"] == want, recs
    # and --check says the same
    r2 = relay_factory.boot(["--check", "--https-listen", "127.0.0.1:8443", *args, "--metrics-listen="])
    assert r2.returncode == 2


def _peer_cert_der(relay) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return t.getpeercert(binary_form=True)


def test_sighup_swaps_the_certificate_without_dropping_connections(relay_factory, certdir, server_id):
    cert, key = make_cert(certdir, "live")
    relay = start_tls(relay_factory, cert, key)
    first = _peer_cert_der(relay)
    binary = claim(relay, server_id)
    phone, cid = register(relay, server_id)

    # a new pair in the same files, then SIGHUP
    newc, newk = make_cert(certdir, "next")
    os.replace(newc, cert)
    os.replace(newk, key)
    mark = relay.log_mark()
    relay.signal(signal.SIGHUP)
    relay.wait_log("tls certificate reloaded", since=mark)
    assert _peer_cert_der(relay) != first  # new handshakes get the new certificate
    # the live session goes on
    phone.send_frame(OP_TEXT, b'{"after":"reload"}')
    assert read_wrapped(binary) == (cid, b'{"after":"reload"}')
    route(binary, cid, b'{"back":1}')
    assert read_text(phone) == b'{"back":1}'

    # a broken file: the current certificate stays, the reason is logged, nothing drops
    served = _peer_cert_der(relay)
    Path(key).write_text("not a key\n")
    mark = relay.log_mark()
    relay.signal(signal.SIGHUP)
    rec = relay.wait_log("tls certificate reload failed; keeping the current one", since=mark)
    assert rec["reason"] == "bad_pem" and rec.get("fix"), rec
    assert _peer_cert_der(relay) == served
    phone.send_frame(OP_TEXT, b'{"still":"up"}')
    assert read_wrapped(binary) == (cid, b'{"still":"up"}')
    assert relay.alive()
