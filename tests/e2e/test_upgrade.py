"""The upgrade endpoints' HTTP side: the required-header gate (400) and the WebSocket
handshake checks that follow it (reference §1.7 steps 9-10, §2.1-2.3)."""

import base64
import os
import time

import pytest

from relayctl import (OP_PING, OP_PONG, ConnClosed, build_frame, build_request, build_upgrade, check_101,
                      client_headers, merge_headers, server_headers, upgrade_headers, ws_key)

ENDPOINT_HEADERS = {
    "/v1/server": ["X-Pyrycode-Server", "X-Pyrycode-Version", "User-Agent"],
    "/v1/client": ["X-Pyrycode-Server", "X-Pyrycode-Token", "User-Agent"],
}


def required_headers(path, server_id):
    return server_headers(server_id) if path == "/v1/server" else client_headers(server_id)


def check_empty_400(resp):
    """Go's http.Error(w, "", 400): status, text/plain, nosniff, body "\\n", no upgrade."""
    assert resp.status == 400, resp
    assert resp.body == b"\n", resp
    assert resp.header("Content-Type") == "text/plain; charset=utf-8", resp
    assert resp.header("X-Content-Type-Options") == "nosniff", resp
    assert not resp.has_header("Sec-WebSocket-Accept"), resp


def assert_not_upgraded(c):
    """After a rejected upgrade the connection either still speaks HTTP (keep-alive) or
    is closed; it never speaks WebSocket."""
    if not c.send_quietly(build_request("GET", "/healthz")):
        return
    try:
        r = c.read_http_response(timeout=3)
    except ConnClosed:
        return
    assert r.status == 200, r


GATE_CASES = [(path, name, mode) for path, names in ENDPOINT_HEADERS.items() for name in names
              for mode in ("missing", "empty")]


@pytest.mark.parametrize("path,name,mode", GATE_CASES,
                         ids=[f"{p.rsplit('/', 1)[1]}-{n}-{m}" for p, n, m in GATE_CASES])
def test_required_header_missing_or_empty_400(relay, server_id, path, name, mode):
    headers = merge_headers(required_headers(path, server_id), {name: None if mode == "missing" else ""})
    c = relay.connect()
    resp = c.upgrade(path, headers, expect=None)
    check_empty_400(resp)
    assert_not_upgraded(c)


@pytest.mark.parametrize("path", list(ENDPOINT_HEADERS))
def test_all_required_headers_missing_400(relay, path):
    c = relay.connect()
    check_empty_400(c.upgrade(path, {}, expect=None))


# The header gate runs before the WebSocket handshake checks: a request that fails both
# gets the gate's 400, never the handshake's 405/426.
BEFORE_HANDSHAKE = {
    "post": dict(method="POST", drop={}),
    "no-upgrade-headers": dict(method="GET", drop={"Upgrade": None, "Connection": None}),
    "bad-version": dict(method="GET", drop={"Sec-WebSocket-Version": "8"}),
    "no-key": dict(method="GET", drop={"Sec-WebSocket-Key": None}),
}


@pytest.mark.parametrize("path", list(ENDPOINT_HEADERS))
@pytest.mark.parametrize("case", list(BEFORE_HANDSHAKE))
def test_header_gate_runs_before_handshake(relay, server_id, path, case):
    spec = BEFORE_HANDSHAKE[case]
    headers = merge_headers(required_headers(path, server_id), {"X-Pyrycode-Server": None}, spec["drop"])
    c = relay.connect()
    c.send(build_upgrade(path, headers, method=spec["method"]))
    check_empty_400(c.read_http_response())


def test_header_names_case_insensitive(relay, server_id):
    for variant in (str.lower, str.upper):
        hdrs = {variant(k): v for k, v in server_headers(server_id + variant.__name__).items()}
        key = ws_key()
        raw = build_request("GET", "/v1/server",
                            [(variant(k), v) for k, v in upgrade_headers(key).items()] + list(hdrs.items()))
        c = relay.connect()
        c.send(raw)
        check_101(c.read_http_response(), key)
        c.ping(b"case")


def test_client_device_name_optional(relay, server_id):
    """/v1/client passes the gate without X-Pyrycode-Device-Name (what happens after the
    101, registration, belongs to the registry issue)."""
    c = relay.connect()
    resp = c.upgrade("/v1/client", client_headers(server_id), expect=None)
    assert resp.status == 101, resp


def test_first_of_repeated_header_is_used(relay, server_id):
    """'if a header is repeated, the first value is used': an empty second copy is fine."""
    hdrs = list(server_headers(server_id).items()) + [("X-Pyrycode-Server", "")]
    c = relay.connect()
    resp = c.upgrade("/v1/server", hdrs, expect=None)
    assert resp.status == 101, resp


# --- handshake checks (all required headers present)

@pytest.mark.parametrize("path", list(ENDPOINT_HEADERS))
@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD"])
def test_non_get_405(relay, server_id, path, method):
    c = relay.connect()
    c.send(build_upgrade(path, required_headers(path, server_id), method=method))
    resp = c.read_http_response(head_only=(method == "HEAD"))
    assert resp.status == 405, resp
    assert not resp.has_header("Sec-WebSocket-Accept")
    if method != "HEAD":
        assert_not_upgraded(c)


UPGRADE_426 = {
    "no-upgrade-header": {"Upgrade": None},
    "upgrade-h2c": {"Upgrade": "h2c"},
    "no-connection-header": {"Connection": None},
    "connection-keep-alive-only": {"Connection": "keep-alive"},
    "no-upgrade-no-connection": {"Upgrade": None, "Connection": None},
}


@pytest.mark.parametrize("case", list(UPGRADE_426))
def test_missing_upgrade_tokens_426(relay, server_id, case):
    c = relay.connect()
    resp = c.upgrade("/v1/server", merge_headers(server_headers(server_id), UPGRADE_426[case]), expect=None)
    assert resp.status == 426, resp
    assert "websocket" in resp.header_tokens("Upgrade"), f"426 must carry Upgrade: websocket: {resp!r}"
    assert not resp.has_header("Sec-WebSocket-Accept")
    assert_not_upgraded(c)


@pytest.mark.parametrize("overrides", [
    {"Connection": "keep-alive, Upgrade"},
    {"Connection": "upgrade"},
    {"Connection": "UPGRADE,keep-alive"},
    {"Connection": "keep-alive ,  Upgrade  "},
    {"Upgrade": "WebSocket"},
], ids=["keep-alive-Upgrade", "lowercase", "uppercase-first", "spaces", "Upgrade-mixed-case"])
def test_upgrade_token_lists_any_case_101(relay, server_id, overrides):
    c = relay.connect()
    c.upgrade("/v1/server", merge_headers(server_headers(server_id), overrides))
    c.ping(b"tokens")


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", "", None], ids=lambda v: repr(v))
def test_websocket_version_not_13_426(relay, server_id, version):
    c = relay.connect()
    resp = c.upgrade("/v1/server", merge_headers(server_headers(server_id), {"Sec-WebSocket-Version": version}),
                     expect=None)
    assert resp.status == 426, resp
    assert resp.header("Sec-WebSocket-Version") == "13", resp
    assert not resp.has_header("Sec-WebSocket-Accept")
    assert_not_upgraded(c)


BAD_KEYS = {
    "missing": None,
    "empty": "",
    "short-text": "abc",
    "15-bytes": base64.b64encode(os.urandom(15)).decode(),
    "17-bytes": base64.b64encode(os.urandom(17)).decode(),
    "not-base64": "!!!!!!!!!!!!!!!!!!!!!!==",
    "no-padding": base64.b64encode(os.urandom(16)).decode().rstrip("="),
}


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_bad_websocket_key_400(relay, server_id, case):
    c = relay.connect()
    resp = c.upgrade("/v1/server", merge_headers(server_headers(server_id), {"Sec-WebSocket-Key": BAD_KEYS[case]}),
                     expect=None)
    assert resp.status == 400, resp
    assert not resp.has_header("Sec-WebSocket-Accept")
    assert_not_upgraded(c)


@pytest.mark.parametrize("path", list(ENDPOINT_HEADERS))
def test_valid_upgrade_101(relay, server_id, path):
    """101 with the right Accept, Upgrade/Connection, no subprotocol, no extension, even
    when the client offers both."""
    key = ws_key()
    c = relay.connect()
    c.send(build_upgrade(path, merge_headers(required_headers(path, server_id), {
        "Sec-WebSocket-Protocol": "chat, superchat",
        "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
        "Origin": "https://evil.example",
    }), key=key))
    resp = c.read_http_response()
    check_101(resp, key)
    assert resp.body == b""


def test_upgrade_one_byte_at_a_time(relay, server_id):
    key = ws_key()
    c = relay.connect()
    c.send_slowly(build_upgrade("/v1/server", server_headers(server_id), key=key), chunk=1, delay=0.001)
    check_101(c.read_http_response(), key)
    c.ping(b"slow")


def test_pipelined_first_frame_after_upgrade(relay, server_id):
    """A ping sent in the same TCP write as the upgrade request is processed."""
    key = ws_key()
    c = relay.connect()
    c.send(build_upgrade("/v1/server", server_headers(server_id), key=key) + build_frame(OP_PING, b"early"))
    check_101(c.read_http_response(), key)
    f = c.read_frame()
    assert f.opcode == OP_PONG and f.payload == b"early", f


def test_rejected_upgrades_are_not_logged(relay, server_id):
    """Header-gate 400s and handshake failures log nothing (§2.2 step 1, §9)."""
    time.sleep(0.2)
    mark = relay.log_mark()
    check_empty_400(relay.connect().upgrade("/v1/server", {}, expect=None))
    relay.connect().upgrade("/v1/client", merge_headers(client_headers(server_id), {"Upgrade": None}), expect=426)
    relay.connect().upgrade("/v1/server", merge_headers(server_headers(server_id), {"Sec-WebSocket-Key": "x"}),
                            expect=400)
    time.sleep(0.3)
    assert relay.log_lines()[mark:] == []


def test_token_and_user_agent_never_logged(relay, server_id):
    token = "tok-" + os.urandom(8).hex()
    ua = "ua-" + os.urandom(8).hex()
    s = relay.ws_server(server_id, **{"User-Agent": ua})
    s.ping(b"x")
    c = relay.connect()
    c.upgrade("/v1/client", client_headers(server_id, token=token, user_agent=ua), expect=None)
    relay.connect().upgrade("/v1/client", merge_headers(client_headers(server_id, token=token),
                                                         {"User-Agent": None}), expect=400)
    time.sleep(0.3)
    text = relay.stderr_text()
    assert token not in text and ua not in text
