"""HTTP layer of the public listener: /healthz, 404s, request parsing limits, keep-alive,
pipelining and the header read timeout (reference §1.2, §5.1, §8.1)."""

import json
import re
import time

import pytest

from relayctl import build_request, build_upgrade, server_headers

HEALTHZ_RE = re.compile(
    rb'\{"status":"ok","version":"(?:[^"\\\x00-\x1f]|\\.)*","connected_binaries":0,'
    rb'"connected_phones":0,"uptime_seconds":(0|[1-9][0-9]*)\}')


def check_healthz(resp):
    assert resp.status == 200, resp
    assert resp.header("Content-Type") == "application/json; charset=utf-8", resp
    assert resp.header("Cache-Control") == "no-store", resp
    assert HEALTHZ_RE.fullmatch(resp.body), f"healthz body {resp.body!r}"
    doc = json.loads(resp.body)
    assert list(doc) == ["status", "version", "connected_binaries", "connected_phones", "uptime_seconds"]
    assert isinstance(doc["version"], str) and doc["version"]
    return doc


def check_404(resp):
    assert resp.status == 404, resp
    assert resp.body == b"404 page not found\n", resp
    assert resp.header("Content-Type") == "text/plain; charset=utf-8", resp
    assert resp.header("X-Content-Type-Options") == "nosniff", resp


def test_healthz_body_and_headers(relay):
    doc = check_healthz(relay.http("GET", "/healthz"))
    assert doc["uptime_seconds"] < 60


@pytest.mark.parametrize("method,body", [("POST", b'{"x":1}'), ("PUT", b""), ("DELETE", b""), ("OPTIONS", b"")])
def test_healthz_any_method(relay, method, body):
    check_healthz(relay.http(method, "/healthz", body=body, content_length=True))


@pytest.mark.parametrize("target", ["/healthz?x=1", "/healthz?", "/healthz?status=down&version=evil"])
def test_healthz_query_ignored(relay, target):
    check_healthz(relay.http("GET", target))


def test_healthz_uptime_counts_whole_seconds(relay):
    first = relay.healthz()["uptime_seconds"]
    time.sleep(1.1)
    second = relay.healthz()["uptime_seconds"]
    assert second >= first + 1, (first, second)


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/server/", "/v1/client/", "/healthz/", "/metrics",
                                  "/HEALTHZ", "/healthzz", "/v1/serverx", "/.well-known/acme-challenge/x"])
def test_unknown_path_404(relay, path):
    check_404(relay.http("GET", path))


def test_unknown_path_404_any_method(relay):
    check_404(relay.http("POST", "/nope", body=b"abc"))


def test_keepalive_two_requests_one_connection(relay):
    c = relay.connect()
    check_healthz(c.request("GET", "/healthz"))
    check_404(c.request("GET", "/nope"))
    check_healthz(c.request("GET", "/healthz?again=1"))
    assert c.is_open(0.1)


def test_pipelined_requests_answered_in_order(relay):
    c = relay.connect()
    c.send(build_request("GET", "/healthz") + build_request("GET", "/nope") + build_request("POST", "/healthz", body=b"{}"))
    check_healthz(c.read_http_response())
    check_404(c.read_http_response())
    check_healthz(c.read_http_response())


# HEAD (RFC 9110 §9.3.2, Go's server): the headers a GET gets, Content-Length included,
# and no body, so the next pipelined request's answer starts right after the head.
HEAD_TARGETS = {
    "healthz": ("/healthz", None),
    "not-found": ("/nope", None),
    "upgrade-without-headers": ("/v1/server", None),  # header gate: 400, kept alive
}


@pytest.mark.parametrize("case", list(HEAD_TARGETS))
def test_head_gets_headers_only_and_keeps_pipelined_framing(relay, case):
    target, headers = HEAD_TARGETS[case]
    c = relay.connect()
    c.send(build_request("GET", target, headers) + build_request("HEAD", target, headers)
           + build_request("GET", "/healthz"))
    got = c.read_http_response()
    head = c.read_http_response(head_only=True)
    assert head.status == got.status, (head, got)
    for name in ("Content-Type", "Content-Length", "Cache-Control", "X-Content-Type-Options", "Connection"):
        assert head.header(name) == got.header(name), (name, head, got)
    assert int(head.header("Content-Length")) == len(got.body) > 0
    # no body after the HEAD answer: the next bytes are the next response
    check_healthz(c.read_http_response())
    assert c.is_open(0.1)


def test_head_on_upgrade_endpoint_405_without_body(relay, server_id):
    c = relay.connect()
    c.send(build_upgrade("/v1/server", server_headers(server_id), method="HEAD"))
    head = c.read_http_response(head_only=True)
    assert head.status == 405 and head.header("Connection") == "close", head
    assert int(head.header("Content-Length")) > 0
    c.wait_closed(3)  # fails on any byte before the close: the body


def test_healthz_one_byte_at_a_time(relay):
    c = relay.connect()
    c.send_slowly(build_request("GET", "/healthz?slow=1", {"User-Agent": "slowpoke"}), chunk=1, delay=0.002)
    check_healthz(c.read_http_response())


def test_http10_request(relay):
    c = relay.connect()
    c.send(build_request("GET", "/healthz", version="HTTP/1.0"))
    check_healthz(c.read_http_response())


def test_header_block_over_16k_gets_431_and_close(relay):
    c = relay.connect()
    c.send_quietly(build_request("GET", "/healthz", {"X-Big": "a" * (17 * 1024)}))
    r = c.read_http_response()
    assert r.status == 431, r
    c.wait_closed(3.0)


def test_header_block_under_16k_is_fine(relay):
    r = relay.http("GET", "/healthz", {"X-Big": "a" * (14 * 1024)})
    check_healthz(r)


def test_many_small_headers_over_16k_gets_431(relay):
    c = relay.connect()
    c.send_quietly(build_request("GET", "/healthz", [(f"X-H{i}", "v" * 100) for i in range(170)]))
    r = c.read_http_response()
    assert r.status == 431, r
    c.wait_closed(3.0)


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz\r\n\r\n",
    b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nNoColonHere\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX-Ctl: a\x01b\r\n\r\n",
], ids=["garbage", "no-version", "extra-token", "relative-target", "header-no-colon",
        "space-before-colon", "control-char-in-value"])
def test_malformed_request_400_and_close(relay, raw):
    c = relay.connect()
    c.send(raw)
    r = c.read_http_response()
    assert r.status == 400, r
    c.wait_closed(3.0)


def test_http2_version_505(relay):
    c = relay.connect()
    c.send(b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n")
    r = c.read_http_response()
    assert r.status == 505, r
    c.wait_closed(3.0)


def test_header_read_timeout_5s(relay):
    """A client that sends nothing (or never finishes its headers) is dropped after the
    5 s read-header timeout: still open at 3 s, closed by ~7 s."""
    silent = relay.connect()
    partial = relay.connect()
    partial.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    time.sleep(3.0)
    assert silent.is_open(0.01), "silent connection closed before 3 s"
    assert partial.is_open(0.01), "connection with a partial request closed before 3 s"
    silent.wait_closed(7.0 - (time.monotonic() - t0))
    partial.wait_closed(max(0.5, 7.5 - (time.monotonic() - t0)), allow_data=True)
    # the relay itself is fine afterwards
    check_healthz(relay.http("GET", "/healthz"))


@pytest.mark.parametrize("version,headers", [("HTTP/1.1", {"Connection": "close"}), ("HTTP/1.0", {})],
                         ids=["http11-connection-close", "http10-default"])
def test_connection_close_honoured(relay, version, headers):
    c = relay.connect()
    c.send(build_request("GET", "/healthz", headers, version=version))
    check_healthz(c.read_http_response())
    c.wait_closed(2.0)


def test_hundred_pipelined_requests(relay):
    c = relay.connect()
    c.send(b"".join(build_request("GET", "/healthz" if i % 2 == 0 else f"/nope{i}") for i in range(100)))
    for i in range(100):
        r = c.read_http_response()
        if i % 2 == 0:
            check_healthz(r)
        else:
            check_404(r)


def test_hundred_concurrent_connections(relay):
    conns = [relay.connect() for _ in range(100)]
    for c in conns:
        c.send(build_request("GET", "/healthz"))
    for c in conns:
        check_healthz(c.read_http_response())
    for c in conns:
        c.close()
    check_healthz(relay.http("GET", "/healthz"))
