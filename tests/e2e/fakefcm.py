"""fakefcm: a local stand-in for Google's OAuth token endpoint and FCM HTTP v1, over TLS
on loopback, for the push wake tests (test_push.py).

  make_pki(dir)            a throwaway CA and a server certificate for 127.0.0.1
  make_credentials(...)    a service-account JSON key (fresh RSA key) and its parts
  FakeGoogle(pki, creds)   the server: .start(), .stop(), .token_url, .send_url, records

The fake checks what the relay sends, the way Google would: the JWT-bearer assertion
(RS256 signature with the key's public half, alg, typ, kid, iss, scope, aud, iat/exp),
the form body, the bearer token on sends, the Content-Type and the exact message body.
Every check that fails is kept in .errors (and answered 400), so a test asserts that
list is empty rather than trusting status codes.

What an FCM send gets back is chosen by the device token's prefix (SCENARIOS below),
so one server serves every test. The token endpoint's behaviour is set on the server
(.token_status, .expires_in) or by the path (/token-fail always answers 500).

Secrets the relay must never print are collected in .secrets(): device tokens, issued
access tokens, the key material, the credential's email and FCM's free-text messages.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
import ipaddress

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
SEND_PATH = "/v1/projects/pyrycode-mobile/messages:send"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MESSAGE_ID = "projects/pyrycode-mobile/messages/0:1700000000%abc_DEF-9"
# FCM's free text: it echoes request data, so it must never reach the relay's log
FCM_SECRET_MESSAGE = "FCM-SECRET-MESSAGE-6f1d"
TOKEN_SECRET_DESCRIPTION = "TOKEN-SECRET-DESCRIPTION-93ab"
REPLY_LIMIT = 4096  # what the relay reads of an FCM reply (reference §7.2)
HOLD_MAX_S = 30.0   # a held request gives up by itself after this


# ------------------------------------------------------------------------------------
# keys and certificates


def _new_rsa(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Pki:
    dir: Path
    ca_path: Path       # the test CA, PEM (what --outbound-ca-file gets)
    cert_path: Path     # the server's certificate (for 127.0.0.1 and localhost)
    key_path: Path


def make_pki(directory: Path) -> Pki:
    """A CA and a server certificate for IP 127.0.0.1 and the name localhost, signed by it, in `directory`
    (made world-readable: the relay runs as nobody)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _new_rsa()
    ca = (x509.CertificateBuilder().subject_name(_name("pyrycode e2e test CA")).issuer_name(_name("pyrycode e2e test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = _new_rsa()
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(directory, directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    for p in (pki.ca_path, pki.cert_path):
        os.chmod(p, 0o644)
    return pki


@dataclass
class Credentials:
    json: str                 # the whole service-account key (PYRYCODE_RELAY_FCM_CREDENTIALS)
    email: str
    key_id: str
    token_uri: str
    private_key: object       # cryptography RSA private key
    pem: str                  # the private_key member's text


def make_credentials(token_uri: Optional[str], key=None, key_format: str = "pkcs8",
                     key_id: str = "0123456789abcdef0123456789abcdef01234567",
                     email: str = "relay-e2e@pyrycode-mobile.iam.gserviceaccount.com") -> Credentials:
    """A service-account key as Google issues it. key_format: pkcs8 | pkcs1 | ec."""
    if key_format == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    key = key or _new_rsa()
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if key_format == "pkcs1" else serialization.PrivateFormat.PKCS8
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()
    doc = {"type": "service_account", "project_id": "pyrycode-mobile", "private_key_id": key_id,
           "private_key": pem, "client_email": email, "client_id": "100000000000000000001",
           "auth_uri": "https://accounts.google.com/o/oauth2/auth",
           "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
           "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/relay-e2e"}
    if token_uri is not None:
        doc["token_uri"] = token_uri
    return Credentials(json.dumps(doc, indent=2), email, key_id, token_uri or "https://oauth2.googleapis.com/token",
                       key, pem)


def go_json_string(s: str) -> str:
    """A JSON string literal escaped as Go's json.Marshal does (HTML-safe)."""
    out = json.dumps(s, ensure_ascii=False)
    return (out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def expected_send_body(token: str) -> bytes:
    return ('{"message":{"token":' + go_json_string(token) + ',"android":{"priority":"HIGH"}}}').encode()


def _b64url_decode(s: str) -> bytes:
    assert "=" not in s, "JWT parts are base64url without padding"
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


# ------------------------------------------------------------------------------------
# the server

SCENARIOS = """
    ok-        200 {"name": MESSAGE_ID}                          -> sent, with the id
    chunked-   200, the same body in chunked transfer coding     -> sent, with the id
    okbad-     200, a body that is not JSON                      -> sent, no id
    okbig-     200, the name after 4 KiB of padding              -> sent, no id (cut at 4 KiB)
    hostile-   200, a name with spaces and '='                   -> sent, no id
    unreg-     404 NOT_FOUND + FcmError UNREGISTERED             -> unregistered
    e5xx-      503 UNAVAILABLE                                   -> send_failed
    redir-     302 to /elsewhere                                 -> send_failed (not followed)
    badjson-   500, an HTML body                                 -> send_failed, status only
    big-       404 UNREGISTERED after 5 KiB of padding           -> send_failed (cut: no reason)
    slow-      200 after .slow_s seconds                         -> a timeout with a short --fcm-timeout
    hold-      200 once release() is called                      -> in-flight cap, shutdown
"""


@dataclass
class Record:
    path: str
    headers: dict
    body: bytes
    at: float = field(default_factory=time.monotonic)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, fmt, *args):  # quiet: the test reports what matters
        pass

    def _reply(self, status: int, body: bytes = b"", headers=(), chunked: bool = False) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if chunked:
            for i in range(0, len(body), 7):
                part = body[i:i + 7]
                self.wfile.write(b"%x;ext=1\r\n" % len(part) + part + b"\r\n")
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
        else:
            self.wfile.write(body)
        self.close_connection = True

    def _json(self, status: int, obj, **kw) -> None:
        self._reply(status, json.dumps(obj).encode(), [("Content-Type", "application/json; charset=UTF-8")], **kw)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        fake: FakeGoogle = self.server.fake
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        rec = Record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        fake._record(rec)
        path = urllib.parse.urlsplit(self.path).path
        if path == "/token-fail":
            return self._json(500, {"error": "internal_failure", "error_description": TOKEN_SECRET_DESCRIPTION})
        if path == "/token":
            return self._token(fake, rec)
        if path == SEND_PATH:
            return self._send(fake, rec)
        if path == "/elsewhere":
            return self._json(200, {"name": MESSAGE_ID})
        return self._reply(404, b"not found")

    # -- OAuth2 JWT-bearer grant
    def _token(self, fake: "FakeGoogle", rec: Record) -> None:
        why = fake._check_token_request(rec)
        if why:
            fake._error(why)
            return self._json(400, {"error": "invalid_grant", "error_description": why})
        if fake.token_status != 200:
            return self._json(fake.token_status, {"error": "unavailable",
                                                  "error_description": TOKEN_SECRET_DESCRIPTION})
        tok = fake._issue_token()
        return self._json(200, {"access_token": tok, "expires_in": fake.expires_in, "token_type": "Bearer"})

    # -- FCM HTTP v1 send
    def _send(self, fake: "FakeGoogle", rec: Record) -> None:
        auth = rec.headers.get("authorization", "")
        try:
            msg = json.loads(rec.body)
            token = msg["message"]["token"]
        except (ValueError, KeyError, TypeError):
            fake._error(f"send body is not an FCM message: {rec.body[:200]!r}")
            return self._json(400, {"error": {"status": "INVALID_ARGUMENT"}})
        problems = []
        if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in fake.issued:
            problems.append(f"send without a token we issued: {auth[:40]!r}")
        if rec.headers.get("content-type") != "application/json":
            problems.append(f"send Content-Type {rec.headers.get('content-type')!r}")
        if rec.body != expected_send_body(token):
            problems.append(f"send body {rec.body!r} != {expected_send_body(token)!r}")
        if problems:
            for p in problems:
                fake._error(p)
            return self._json(400, {"error": {"status": "INVALID_ARGUMENT"}})
        fake._note_send(token)
        error = lambda code, status, fcm_code=None: {  # noqa: E731
            "error": {"code": code, "message": f"{FCM_SECRET_MESSAGE} token {token}", "status": status,
                      "details": ([{"@type": FCM_ERROR_TYPE, "errorCode": fcm_code}] if fcm_code else [])}}
        if token.startswith("ok-"):
            return self._json(200, {"name": MESSAGE_ID})
        if token.startswith("chunked-"):
            return self._json(200, {"name": MESSAGE_ID}, chunked=True)
        if token.startswith("okbad-"):
            return self._reply(200, b"{not json " + FCM_SECRET_MESSAGE.encode())
        if token.startswith("okbig-"):
            return self._json(200, {"pad": "x" * (REPLY_LIMIT + 100), "name": MESSAGE_ID})
        if token.startswith("hostile-"):
            return self._json(200, {"name": f"evil name={FCM_SECRET_MESSAGE} level=ERROR"})
        if token.startswith("unreg-"):
            return self._json(404, error(404, "NOT_FOUND", "UNREGISTERED"))
        if token.startswith("e5xx-"):
            return self._json(503, error(503, "UNAVAILABLE"))
        if token.startswith("redir-"):
            return self._reply(302, b"", [("Location", f"https://127.0.0.1:{fake.port}/elsewhere")])
        if token.startswith("badjson-"):
            return self._reply(500, f"<html>{FCM_SECRET_MESSAGE}</html>".encode(), [("Content-Type", "text/html")])
        if token.startswith("big-"):
            return self._json(404, {"pad": "y" * (REPLY_LIMIT + 1000), **error(404, "NOT_FOUND", "UNREGISTERED")})
        if token.startswith("slow-"):
            time.sleep(fake.slow_s)
            return self._json(200, {"name": MESSAGE_ID})
        if token.startswith("hold-"):
            with fake._cond:
                fake.held += 1
                fake._cond.notify_all()
            fake._release.wait(HOLD_MAX_S)
            with fake._cond:
                fake.held -= 1
            return self._json(200, {"name": MESSAGE_ID})
        fake._error(f"no scenario for token prefix of {token[:12]!r}")
        return self._json(400, {"error": {"status": "INVALID_ARGUMENT"}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 33 sends may connect at once

    def handle_error(self, request, client_address):  # a cancelled call resets: expected
        pass


class FakeGoogle:
    """The OAuth token endpoint and FCM's send endpoint on one TLS port (127.0.0.1)."""

    def __init__(self, pki: Pki, creds: Optional[Credentials] = None):
        self.pki = pki
        self.creds = creds
        self.token_status = 200
        self.expires_in = 3599
        self.slow_s = 3.0
        self.records: list = []
        self.errors: list = []
        self.issued: list = []
        self.sent_tokens: list = []
        self.held = 0
        self._cond = threading.Condition()
        self._release = threading.Event()
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle
    def start(self) -> "FakeGoogle":
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.pki.cert_path), str(self.pki.key_path))
        # the handshake runs in the handler's thread, not in accept: one slow client
        # must not stall the others
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def token_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    @property
    def send_url(self) -> str:
        return f"https://127.0.0.1:{self.port}{SEND_PATH}"

    # -- control
    def release(self) -> None:
        """Let every held (and future hold-) request answer."""
        self._release.set()

    def wait_held(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.held < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.held} requests held, expected {n}")
                self._cond.wait(left)

    # -- what happened
    def _record(self, rec: Record) -> None:
        with self._cond:
            self.records.append(rec)

    def _error(self, why: str) -> None:
        with self._cond:
            self.errors.append(why)

    def _note_send(self, token: str) -> None:
        with self._cond:
            self.sent_tokens.append(token)

    def _issue_token(self) -> str:
        with self._cond:
            tok = f"ya29.SECRET-ACCESS-{len(self.issued)}-{os.urandom(6).hex()}"
            self.issued.append(tok)
            return tok

    def requests(self, path_prefix: str) -> list:
        with self._cond:
            return [r for r in self.records if r.path.startswith(path_prefix)]

    def secrets(self) -> list:
        """Everything the relay must never print."""
        with self._cond:
            out = list(self.issued) + list(self.sent_tokens) + [FCM_SECRET_MESSAGE, TOKEN_SECRET_DESCRIPTION]
        if self.creds is not None:
            out.append(self.creds.email)
            out += [line for line in self.creds.pem.splitlines() if line and not line.startswith("-----")]
        return out

    # -- the JWT-bearer assertion, checked as Google's token endpoint would
    def _check_token_request(self, rec: Record) -> Optional[str]:
        if rec.headers.get("content-type") != "application/x-www-form-urlencoded":
            return f"token request Content-Type {rec.headers.get('content-type')!r}"
        form = urllib.parse.parse_qs(rec.body.decode(), strict_parsing=True)
        if sorted(form) != ["assertion", "grant_type"] or form["grant_type"] != [GRANT_TYPE]:
            return f"token request form {sorted(form)} / {form.get('grant_type')}"
        if not rec.body.decode().startswith("assertion="):
            return "form keys not sorted as url.Values.Encode writes them"
        if self.creds is None:
            return None
        jwt = form["assertion"][0]
        parts = jwt.split(".")
        if len(parts) != 3:
            return "assertion is not three base64url parts"
        header, claims = json.loads(_b64url_decode(parts[0])), json.loads(_b64url_decode(parts[1]))
        try:
            self.creds.private_key.public_key().verify(_b64url_decode(parts[2]), (parts[0] + "." + parts[1]).encode(),
                                                       padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # noqa: BLE001 (InvalidSignature)
            return "assertion signature does not verify with the key's public half"
        want_header = {"alg": "RS256", "typ": "JWT", "kid": self.creds.key_id}
        if header != want_header or list(header) != list(want_header):
            return f"assertion header {header} != {want_header} (Go's field order)"
        now = time.time()
        if (list(claims) != ["iss", "scope", "aud", "exp", "iat"] or claims["iss"] != self.creds.email
                or claims["scope"] != FCM_SCOPE or claims["aud"] != self.creds.token_uri):
            return f"assertion claims {claims}"
        if claims["exp"] - claims["iat"] != 3600 or not (now - 70 <= claims["iat"] <= now + 5):
            return f"assertion iat/exp {claims['iat']}/{claims['exp']} at {now:.0f}"
        return None
