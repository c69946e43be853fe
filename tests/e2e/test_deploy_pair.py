"""The shipped pair: deploy/systemd/pyrycode-relay.service's relay flags behind the
shipped HAProxy configs. HAProxy sets X-Forwarded-For, the unit passes
--trust-x-forwarded-for: two clients on different addresses (127.0.0.2, 127.0.0.3)
must get separate upgrade rate-limit buckets. A relay without the flag, behind the same
proxy, is the control: there both share HAProxy's 127.0.0.1 bucket.

The relay runs with exactly the unit's RELAY_FLAGS, except that the harness gives it
free ports in place of the unit's --insecure-listen / --metrics-listen (checked to be
the address the HAProxy configs point at by default)."""

import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from relayctl import REPO_ROOT, free_port, wait_until

DEPLOY = REPO_ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "pyrycode-relay.service"
TLS_CFG = DEPLOY / "haproxy" / "pyrycode-relay-tls.cfg"
SCALEOUT_CFG = DEPLOY / "haproxy" / "pyrycode-relay-scaleout.cfg"
BURST = 20  # the relay's default --rate-limit-burst (the unit does not change it)
# HAProxy refuses to start when maxconn does not fit the descriptor limit.
HAPROXY_MAXCONN = "4000"


def unit_relay_flags():
    """RELAY_FLAGS of the unit, split as systemd splits $RELAY_FLAGS."""
    m = re.search(r'^Environment="RELAY_FLAGS=(.*)"$', UNIT.read_text(), re.M)
    assert m, "the unit has no Environment=\"RELAY_FLAGS=...\" line"
    return shlex.split(m.group(1))


def split_listen(flags):
    """(--insecure-listen value, the other flags without the two listener flags)."""
    rest, listen, i = [], None, 0
    while i < len(flags):
        f = flags[i]
        name = f.lstrip("-").split("=", 1)[0]
        if name in ("insecure-listen", "metrics-listen"):
            value = f.split("=", 1)[1] if "=" in f else flags[i + 1]
            i += 1 if "=" in f else 2
            if name == "insecure-listen":
                listen = value
            continue
        rest.append(f)
        i += 1
    return listen, rest


def test_unit_flags_trust_the_header_the_configs_set():
    flags = unit_relay_flags()
    listen, rest = split_listen(flags)
    assert "--trust-x-forwarded-for" in rest
    # the relay listens where HAProxy forwards by default, on loopback only
    assert listen == "127.0.0.1:8080"
    assert '"${PYRY_RELAY_ADDR-127.0.0.1:8080}"' in TLS_CFG.read_text()
    for cfg in (TLS_CFG, SCALEOUT_CFG):
        text = cfg.read_text()
        assert re.search(r"^\s*option forwardfor\b", text, re.M), cfg
        assert re.search(r"^\s*http-request del-header X-Forwarded-For\b", text, re.M), cfg


def _cert(tmp_path):
    pem = tmp_path / "haproxy.pem"
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=30)
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    os.chmod(pem, 0o644)  # read by HAProxy before it drops to its own user
    return pem


class Proxy:
    def __init__(self, kind, tmp_path, relay_port):
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert os.access(haproxy, os.X_OK), "haproxy missing: tools/deps.sh test installs it"
        self.port, self.tls = free_port(), kind == "tls"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYRY_HAPROXY_MAXCONN": HAPROXY_MAXCONN}
        if self.tls:
            cfg = TLS_CFG
            env.update(PYRY_TLS_BIND=f"127.0.0.1:{self.port}", PYRY_TLS_CERT=str(_cert(tmp_path)),
                       PYRY_RELAY_ADDR=f"127.0.0.1:{relay_port}")
        else:  # the scale-out config with one relay, templated as run-local.sh does
            text = SCALEOUT_CFG.read_text()
            head, tail = text.split("# BEGIN relays", 1)
            tail = tail[tail.index("# END relays"):]
            cfg = tmp_path / "scaleout.cfg"
            cfg.write_text(f"{head}# BEGIN relays\n    server relay1 127.0.0.1:{relay_port}\n    {tail}")
            env.update(PYRY_BIND=f"127.0.0.1:{self.port}")
        self.log = open(tmp_path / f"haproxy-{kind}.log", "wb")
        self.proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.status("/healthz", "127.0.0.1") == 200, 15, 0.1, "HAProxy to forward /healthz")

    def status(self, target, source):
        """Status of one GET on a fresh connection from `source` (None if no answer)."""
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(source, 0))
        except OSError:
            return None
        try:
            if self.tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                s = ctx.wrap_socket(s, server_hostname="localhost")
            # /v1/server without the upgrade headers: the relay's rate limit is checked
            # before its header gate, so each one spends a token (400 until it is empty)
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: relay.test\r\nX-Pyrycode-Server: pair-test\r\n"
                      f"X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return None
                data += chunk
            return int(data.split(b" ", 2)[1])
        except (OSError, ValueError):
            return None
        finally:
            s.close()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture
def proxies():
    made = []
    yield made
    for p in made:
        p.stop()


@pytest.mark.parametrize("kind", ["tls", "scaleout"])
def test_two_client_addresses_get_two_buckets(relay_factory, proxies, tmp_path, kind):
    _, flags = split_listen(unit_relay_flags())
    relay = relay_factory.start(args=flags, tls=False)  # the proxy in front terminates TLS
    proxy = Proxy(kind, tmp_path, relay.port)
    proxies.append(proxy)
    # The client's own X-Forwarded-For (203.0.113.9) is replaced by HAProxy: were it
    # kept, both clients would share that forged address's bucket.
    got = [proxy.status("/v1/server", "127.0.0.2") for _ in range(BURST + 1)]
    assert got == [400] * BURST + [429], got
    assert proxy.status("/v1/server", "127.0.0.3") == 400, "127.0.0.3 shared 127.0.0.2's bucket"
    assert proxy.status("/v1/server", "127.0.0.2") == 429


def test_control_without_the_flag_every_client_shares_one_bucket(relay_factory, proxies, tmp_path):
    _, flags = split_listen(unit_relay_flags())
    relay = relay_factory.start(args=[f for f in flags if f != "--trust-x-forwarded-for"], tls=False)
    proxy = Proxy("scaleout", tmp_path, relay.port)
    proxies.append(proxy)
    got = [proxy.status("/v1/server", "127.0.0.2") for _ in range(BURST)]
    assert got == [400] * BURST, got
    assert proxy.status("/v1/server", "127.0.0.3") == 429
