"""The WebSocket layer after a successful upgrade on /v1/server: real clients (Python
websockets, Node ws), control frames, the close handshake, size and UTF-8 limits, and
every protocol violation with the close code the relay must answer (RFC 6455, reference
§2.4, §3.6, §5.5). What data messages *do* is the routing issue's business: here a data
message only must not close the connection."""

import asyncio
import time

import pytest

from relayctl import (MAX_MESSAGE_BYTES, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RSV1, RSV2,
                      RSV3, build_frame, close_payload, py_ws_connect, run_async, run_wsclient, server_headers,
                      text_frames)

ENVELOPE = b'{"conn_id":"nobody","frame":{}}'


def padded_envelope(size):
    """A valid envelope (unknown conn_id) of exactly `size` bytes."""
    head, tail = b'{"conn_id":"nobody","frame":{"pad":"', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def expect_close_then_tcp_close(conn, code, reply=True, tcp_timeout=6.5):
    """The relay's next frame is a close with `code`; then (after our close reply, as a
    real client sends one) the relay closes TCP, within its bounded close wait."""
    got, reason = conn.read_close(timeout=5)
    assert got == code, f"close code {got} (reason {reason!r}), expected {code}"
    if reply:
        conn.send_quietly(build_frame(OP_CLOSE, close_payload(code)), timeout=2)
    return conn.wait_closed(tcp_timeout)


# --- real clients

def test_python_websockets_client(relay, server_id):
    async def session():
        async with py_ws_connect(relay, "/v1/server", server_headers(server_id)) as ws:
            assert ws.subprotocol is None
            assert "Sec-WebSocket-Extensions" not in ws.response_headers
            await asyncio.wait_for(await ws.ping(b"py-1"), 3)
            await ws.send(ENVELOPE.decode())
            await asyncio.wait_for(await ws.ping(b"py-2"), 3)
            t0 = time.monotonic()
            await ws.close(1000)
            return ws.close_code, time.monotonic() - t0

    code, close_s = run_async(session(), timeout=15)
    assert code == 1000
    assert close_s < 3, f"close handshake took {close_s:.1f}s"


def test_python_websockets_client_offering_deflate_gets_none(relay, server_id):
    async def session():
        async with py_ws_connect(relay, "/v1/server", server_headers(server_id), compression="deflate") as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response_headers
            await asyncio.wait_for(await ws.ping(b"deflate?"), 3)
            await ws.send(ENVELOPE.decode())
            await asyncio.wait_for(await ws.ping(b"still"), 3)

    run_async(session(), timeout=15)


def test_node_ws_client(relay, server_id):
    out = run_wsclient(relay.ws_url("/v1/server"), server_headers(server_id), steps=[
        {"op": "ping", "data": "node-1"},
        {"op": "send", "text": ENVELOPE.decode()},
        {"op": "pong", "data": "unsolicited"},
        {"op": "ping", "data": "node-2"},
        {"op": "expect_open", "ms": 100},
        {"op": "close", "code": 1000},
        {"op": "expect_close", "code": 1000},
    ])
    assert out["ok"], out
    hdrs = out["upgrade"]["headers"]
    assert out["upgrade"]["status"] == 101
    assert "sec-websocket-extensions" not in hdrs, hdrs  # ws offers permessage-deflate by default
    assert "sec-websocket-protocol" not in hdrs, hdrs
    assert out["close"]["elapsed_ms"] < 5000


def test_node_ws_client_rejected_without_headers(relay):
    out = run_wsclient(relay.ws_url("/v1/server"), {"User-Agent": "node"}, steps=[])
    assert not out["ok"]
    assert out["upgrade"]["status"] == 400, out
    assert out["upgrade"]["body"] == "\n", out


# --- control frames

@pytest.mark.parametrize("payload", [b"", b"p", b"\x00\xff\x80binary", b"x" * 125], ids=["empty", "1", "binary", "125"])
def test_ping_gets_pong_with_same_payload(relay, server_id, payload):
    c = relay.ws_server(server_id)
    c.ping(payload)


def test_many_pings_in_one_write_all_answered_in_order(relay, server_id):
    c = relay.ws_server(server_id)
    c.send(b"".join(build_frame(OP_PING, b"p%03d" % i) for i in range(50)))
    for i in range(50):
        f = c.read_frame()
        assert f.opcode == OP_PONG and f.payload == b"p%03d" % i, f


def test_ping_split_one_byte_at_a_time(relay, server_id):
    c = relay.ws_server(server_id)
    c.send_slowly(build_frame(OP_PING, b"byte-by-byte"), chunk=1, delay=0.002)
    f = c.read_frame()
    assert f.opcode == OP_PONG and f.payload == b"byte-by-byte", f


def test_unsolicited_pong_ignored(relay, server_id):
    c = relay.ws_server(server_id)
    c.send_frame(OP_PONG, b"nobody-asked")
    c.send_frame(OP_PONG, b"")
    c.ping(b"after-pong")


# --- data messages (only: they do not close the connection)

@pytest.mark.parametrize("opcode,payload", [(OP_TEXT, ENVELOPE), (OP_BINARY, ENVELOPE), (OP_TEXT, b""),
                                            (OP_TEXT, b"not json at all")],
                         ids=["text-envelope", "binary-envelope", "empty-text", "text-not-json"])
def test_data_message_keeps_connection_open(relay, server_id, opcode, payload):
    c = relay.ws_server(server_id)
    c.send_frame(opcode, payload)
    c.ping(b"still-there")


def test_message_split_byte_by_byte_across_segments(relay, server_id):
    c = relay.ws_server(server_id)
    c.send_slowly(build_frame(OP_TEXT, ENVELOPE) + build_frame(OP_PING, b"after"), chunk=1, delay=0.001)
    f = c.read_frame()
    assert f.opcode == OP_PONG and f.payload == b"after", f


def test_max_size_message_single_frame_accepted(relay, server_id):
    c = relay.ws_server(server_id)
    c.send(build_frame(OP_TEXT, padded_envelope(MAX_MESSAGE_BYTES)))
    c.ping(b"after-256k", timeout=10)


def test_max_size_message_fragmented_accepted(relay, server_id):
    c = relay.ws_server(server_id)
    msg = padded_envelope(MAX_MESSAGE_BYTES)
    c.send(text_frames(msg, [100_000, 100_000, 62_144]))
    c.ping(b"after-256k-fragmented", timeout=10)


def test_control_frames_between_fragments(relay, server_id):
    c = relay.ws_server(server_id)
    c.send(build_frame(OP_TEXT, ENVELOPE[:10], fin=False))
    c.ping(b"mid-message-1")
    c.send(build_frame(OP_CONT, ENVELOPE[10:20], fin=False))
    c.send_frame(OP_PONG, b"unsolicited-mid-message")
    c.ping(b"mid-message-2")
    c.send(build_frame(OP_CONT, ENVELOPE[20:], fin=True))
    c.ping(b"after-message")


def test_valid_utf8_split_across_fragments_accepted(relay, server_id):
    c = relay.ws_server(server_id)
    text = '{"conn_id":"nobody","frame":"€ 𝄞 ü"}'.encode()
    i = text.index("€".encode()) + 1  # cut inside the 3-byte euro sign
    j = text.index("𝄞".encode()) + 2  # and inside the 4-byte clef
    c.send(build_frame(OP_TEXT, text[:i], fin=False) + build_frame(OP_CONT, text[i:j], fin=False)
           + build_frame(OP_CONT, text[j:], fin=True))
    c.ping(b"utf8-ok")


def test_empty_fragments_accepted(relay, server_id):
    c = relay.ws_server(server_id)
    c.send(build_frame(OP_TEXT, b"", fin=False) + build_frame(OP_CONT, ENVELOPE, fin=False)
           + build_frame(OP_CONT, b"", fin=True))
    c.ping(b"empty-fragments-ok")


# --- the close handshake started by the client

@pytest.mark.parametrize("code", [1000, 1001, 1011, 3000, 4000, 4999])
def test_client_close_code_echoed_then_tcp_closed(relay, server_id, code):
    c = relay.ws_server(server_id)
    c.send_close(code, "bye")
    got, _reason = c.read_close()
    assert got == code
    c.wait_closed(3.0)


def test_client_close_without_status_answered(relay, server_id):
    c = relay.ws_server(server_id)
    c.send_close(None)
    got, reason = c.read_close()
    assert got in (None, 1000), got
    c.wait_closed(3.0)


def test_client_close_mid_fragmented_message(relay, server_id):
    c = relay.ws_server(server_id)
    c.send(build_frame(OP_TEXT, b'{"conn_id":', fin=False))
    c.send_close(1000)
    got, _ = c.read_close()
    assert got == 1000
    c.wait_closed(3.0)


def test_client_tcp_close_without_ws_close(relay, server_id):
    """A binary that just drops TCP leaves the relay healthy."""
    c = relay.ws_server(server_id)
    c.ping(b"x")
    c.close()
    time.sleep(0.1)
    assert relay.healthz()["status"] == "ok"


# --- protocol violations: (frames sent after the upgrade, close code the relay must send)

OVER = MAX_MESSAGE_BYTES + 1
VIOLATIONS = [
    pytest.param(build_frame(OP_TEXT, ENVELOPE, mask=False), 1002, id="unmasked-text"),
    pytest.param(build_frame(OP_PING, b"x", mask=False), 1002, id="unmasked-ping"),
    pytest.param(build_frame(OP_TEXT, ENVELOPE, rsv=RSV1), 1002, id="rsv1-text"),
    pytest.param(build_frame(OP_TEXT, ENVELOPE, rsv=RSV2), 1002, id="rsv2-text"),
    pytest.param(build_frame(OP_TEXT, ENVELOPE, rsv=RSV3), 1002, id="rsv3-text"),
    pytest.param(build_frame(OP_PING, b"x", rsv=RSV1), 1002, id="rsv1-ping"),
    pytest.param(build_frame(0x3, b"x"), 1002, id="opcode-3"),
    pytest.param(build_frame(0x7, b"x"), 1002, id="opcode-7"),
    pytest.param(build_frame(0xB, b"x"), 1002, id="opcode-0xB"),
    pytest.param(build_frame(0xF, b""), 1002, id="opcode-0xF"),
    pytest.param(build_frame(OP_PING, b"x", fin=False), 1002, id="fragmented-ping"),
    pytest.param(build_frame(OP_CLOSE, close_payload(1000), fin=False), 1002, id="fragmented-close"),
    pytest.param(build_frame(OP_PING, b"x" * 126), 1002, id="ping-126-bytes"),
    pytest.param(build_frame(OP_PONG, b"x" * 126), 1002, id="pong-126-bytes"),
    pytest.param(build_frame(OP_CLOSE, close_payload(1000, b"r" * 124)), 1002, id="close-126-bytes"),
    pytest.param(build_frame(OP_CONT, b"abc", fin=True), 1002, id="continuation-without-message"),
    pytest.param(build_frame(OP_CONT, b"abc", fin=False), 1002, id="continuation-nofin-without-message"),
    pytest.param(build_frame(OP_TEXT, b'{"a":', fin=False) + build_frame(OP_TEXT, b"1}"), 1002,
                 id="text-inside-fragmented-message"),
    pytest.param(build_frame(OP_TEXT, b'{"a":', fin=False) + build_frame(OP_BINARY, b"1}"), 1002,
                 id="binary-inside-fragmented-message"),
    pytest.param(build_frame(OP_TEXT, b"x" * OVER), 1009, id="too-big-single-frame-text"),
    pytest.param(build_frame(OP_BINARY, b"x" * OVER), 1009, id="too-big-single-frame-binary"),
    pytest.param(text_frames(b"x" * OVER, [131072, 131073]), 1009, id="too-big-two-fragments"),
    pytest.param(text_frames(b"x" * OVER, [65536] * 4 + [1]), 1009, id="too-big-last-fragment-1-byte"),
    pytest.param(build_frame(OP_TEXT, b"x", length=1 << 40, mask=True)[:14], 1009, id="declared-length-2^40"),
    pytest.param(build_frame(OP_TEXT, b"\xff"), 1007, id="utf8-ff"),
    pytest.param(build_frame(OP_TEXT, b'{"a":"\xc0\xaf"}'), 1007, id="utf8-overlong"),
    pytest.param(build_frame(OP_TEXT, b'{"a":"\xed\xa0\x80"}'), 1007, id="utf8-surrogate"),
    pytest.param(build_frame(OP_TEXT, b'{"a":"\xf4\x90\x80\x80"}'), 1007, id="utf8-above-10ffff"),
    pytest.param(build_frame(OP_TEXT, b'{"a":"\xe2\x82', fin=False) + build_frame(OP_CONT, b'("}'), 1007,
                 id="utf8-invalid-across-fragments"),
    pytest.param(build_frame(OP_TEXT, b'{"a":"ab\xe2\x82'), 1007, id="utf8-truncated-at-end"),
    pytest.param(build_frame(OP_TEXT, b'{"a":"ab\xe2', fin=False) + build_frame(OP_CONT, b"", fin=True), 1007,
                 id="utf8-truncated-at-end-fragmented"),
    pytest.param(build_frame(OP_CLOSE, b"\x03"), 1002, id="close-1-byte-payload"),
    pytest.param(build_frame(OP_CLOSE, close_payload(1005)), 1002, id="close-code-1005"),
    pytest.param(build_frame(OP_CLOSE, close_payload(1006)), 1002, id="close-code-1006"),
    pytest.param(build_frame(OP_CLOSE, close_payload(1015)), 1002, id="close-code-1015"),
    pytest.param(build_frame(OP_CLOSE, close_payload(999)), 1002, id="close-code-999"),
    pytest.param(build_frame(OP_CLOSE, close_payload(1004)), 1002, id="close-code-1004"),
    pytest.param(build_frame(OP_CLOSE, close_payload(2999)), 1002, id="close-code-2999"),
    pytest.param(build_frame(OP_CLOSE, close_payload(5000)), 1002, id="close-code-5000"),
    pytest.param(build_frame(OP_CLOSE, close_payload(0)), 1002, id="close-code-0"),
    pytest.param(build_frame(OP_CLOSE, close_payload(1000, b"bad \xff reason")), 1007, id="close-reason-not-utf8"),
]


@pytest.mark.parametrize("data,code", VIOLATIONS)
def test_protocol_violation_closes_with_code(relay, server_id, data, code):
    c = relay.ws_server(server_id)
    c.send_quietly(data, timeout=5)
    expect_close_then_tcp_close(c, code)


def test_violation_after_valid_traffic(relay, server_id):
    c = relay.ws_server(server_id)
    c.send_frame(OP_TEXT, ENVELOPE)
    c.ping(b"ok")
    c.send(build_frame(OP_TEXT, b"\xfe"))
    expect_close_then_tcp_close(c, 1007)


def test_relay_close_waits_bounded_for_client_close(relay, server_id):
    """A client that never answers the relay's close frame still sees TCP closed within ~6 s."""
    c = relay.ws_server(server_id)
    c.send(build_frame(OP_TEXT, ENVELOPE, rsv=RSV1))
    waited = expect_close_then_tcp_close(c, 1002, reply=False, tcp_timeout=6.5)
    assert waited <= 6.5


def test_violation_does_not_affect_other_connections(relay, server_id):
    a = relay.ws_server(server_id + "-a")
    b = relay.ws_server(server_id + "-b")
    a.send(build_frame(OP_TEXT, ENVELOPE, mask=False))
    expect_close_then_tcp_close(a, 1002)
    b.ping(b"b-unaffected")


def test_payload_length_with_high_bit_set(relay, server_id):
    """A 64-bit length must have its most significant bit clear (RFC 6455 §5.2)."""
    c = relay.ws_server(server_id)
    c.send(build_frame(OP_BINARY, b"", length=1 << 63, len_form=64))
    got, reason = c.read_close()
    assert got in (1002, 1009), (got, reason)
    c.wait_closed(6.5)


def test_fifty_concurrent_websockets(relay, server_id):
    """Fifty binaries at once (each from its own loopback source address, so a per-IP
    upgrade limiter never interferes): all upgraded, all answered, all closed cleanly."""
    conns = []
    for i in range(50):
        c = relay.connect(source=f"127.0.0.{10 + i}")
        c.upgrade("/v1/server", server_headers(f"{server_id}-{i}"))
        conns.append(c)
    for i, c in enumerate(conns):
        c.send_frame(OP_PING, b"n%d" % i)
    for i, c in enumerate(conns):
        f = c.read_frame()
        assert f.opcode == OP_PONG and f.payload == b"n%d" % i, f
    for c in conns:
        c.send_close(1000)
    for c in conns:
        assert c.read_close()[0] == 1000
        c.wait_closed(3.0)
