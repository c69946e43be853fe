"""Routing through the registry: claim/register logs, the phone -> binary wrapper, the
binary -> phone envelope kinds (routed frame, close directive, push wake, malformed), and
close notices to the binary (reference §2.2, §2.3, §2.4, §3, §4.6, §9)."""

import json
import socket
import struct
import time

import pytest

from relayctl import OP_BINARY, OP_TEXT, client_headers
from relayhelp import (LOCAL_IP, claim, conn_id_re, directive, expect_close, hello, quiet_for, read_env,
                       read_text, register, routed)


# --- 1. claim + register

def test_claim_and_register_logs_without_secrets(relay, server_id):
    token = "tok-SECRET-" + server_id[-12:]
    ua_bin, ua_phone = "UA-BIN-" + server_id[-12:], "UA-PHONE-" + server_id[-12:]
    binary = relay.ws_server(server_id, **{"X-Pyrycode-Version": "v9.8.7", "User-Agent": ua_bin})
    rec = relay.wait_log("server_claimed", server_id=server_id)
    assert rec.get("binary_version") == "v9.8.7", rec
    assert rec.get("remote") == LOCAL_IP, rec
    assert rec.get("level") == "INFO", rec

    phone = relay.ws_client(server_id, **{"X-Pyrycode-Token": token, "User-Agent": ua_phone,
                                          "X-Pyrycode-Device-Name": "Pixel 8 \"work\""})
    rec = relay.wait_log("phone_registered", server_id=server_id)
    assert conn_id_re(server_id).fullmatch(rec.get("conn_id", "")), rec
    assert rec.get("device_name") == 'Pixel 8 "work"', rec
    assert rec.get("remote") == LOCAL_IP, rec

    # the conn_id the binary sees is the logged one
    phone.send_json({"x": 1})
    env = read_env(binary)
    assert env["conn_id"] == rec["conn_id"]

    # a phone without a device name logs device_name="" (§2.3)
    mark = relay.log_mark()
    relay.ws_client(server_id, **{"X-Pyrycode-Token": token, "User-Agent": ua_phone})
    rec2 = relay.wait_log("phone_registered", since=mark, server_id=server_id)
    assert rec2.get("device_name") == "", rec2

    # let close/unregister lines happen too, then look at everything
    phone.send_close(1000)
    phone.read_close()
    relay.wait_log("phone_unregistered", conn_id=rec["conn_id"])
    text = relay.stderr_text()
    for secret in (token, ua_bin, ua_phone):
        assert secret not in text, f"{secret!r} leaked into the log:\n{relay.log_tail()}"


# --- 2. phone -> binary

PHONE_VALUES = [
    b'{ "type" : "noise_init",\n\t"payload":"AAEC", "n" : [1, 2 ,3] }',
    b'"just a string"',
    b"42",
    b"[ ]",
    b"true",
    b"null",
    b'{"u":"\xc3\xa9\\u00e9 <>&"}',
]


def test_phone_frame_wrapped_verbatim(relay, server_id):
    binary = claim(relay, server_id)
    phone = register(relay, server_id)
    cid = None
    for v in PHONE_VALUES:
        phone.send_text(v)
        raw = read_text(binary)
        env = json.loads(raw)
        cid = cid or env["conn_id"]
        assert conn_id_re(server_id).fullmatch(cid), raw
        assert env["conn_id"] == cid, "conn_id changed between frames of one phone"
        expected = b'{"conn_id":' + json.dumps(cid).encode() + b',"frame":' + v + b"}"
        assert raw == expected, f"wrapped frame {raw!r}, expected {expected!r}"


def test_phone_frame_surrounding_whitespace_verbatim(relay, server_id):
    binary = claim(relay, server_id)
    phone = register(relay, server_id)
    v = b' \n {"a":1} \t\r\n'
    phone.send_text(v)
    raw = read_text(binary)
    cid = json.loads(raw)["conn_id"]
    expected = b'{"conn_id":' + json.dumps(cid).encode() + b',"frame":' + v + b"}"
    assert raw == expected, f"wrapped frame {raw!r}, expected {expected!r}"


def test_phone_binary_opcode_json_accepted_and_sent_as_text(relay, server_id):
    binary = claim(relay, server_id)
    phone = register(relay, server_id)
    phone.send_frame(OP_BINARY, b'{"bin": [true]}')
    op, raw = binary.read_message()
    assert op == OP_TEXT
    env = json.loads(raw)
    assert raw == b'{"conn_id":' + json.dumps(env["conn_id"]).encode() + b',"frame":{"bin": [true]}}'
    assert phone.is_open(0.2)


def test_two_phones_get_distinct_conn_ids(relay, server_id):
    binary = claim(relay, server_id)
    _, a = hello(relay, binary, server_id, "a")
    _, b = hello(relay, binary, server_id, "b")
    assert a != b


@pytest.mark.parametrize("opcode,payload", [
    (OP_TEXT, b'{"broken": '),
    (OP_TEXT, b""),
    (OP_TEXT, b"{} {}"),
    (OP_BINARY, b'{"s":"\xff\xfe"}'),
], ids=["truncated", "empty", "two-values", "binary-invalid-utf8"])
def test_phone_invalid_json_closes_phone_and_notifies_binary(relay, server_id, opcode, payload):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    mark = relay.log_mark()
    phone.send_frame(opcode, payload)
    expect_close(phone, 1000, b"")
    relay.wait_log("phone_forwarder_marshal_err", since=mark, server_id=server_id, conn_id=cid)
    raw = read_text(binary)
    assert json.loads(raw) == {"conn_id": cid, "close_code": 1001}, raw
    assert b"frame" not in raw, raw


# --- 3. binary -> phone

def test_routed_frame_exact_bytes(relay, server_id):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    values = ['{ "k" : [1,  2],\n "s":"\\u00e9\\n" }', '"str"', "-1.5e3", "[]", "false",
              '{"u":"\u00e9 <>&"}']
    for v in values:
        binary.send(_text_frame(routed(cid, v)))
    # an envelope in a binary-opcode frame is accepted too (§3.6)
    binary.send_frame(OP_BINARY, routed(cid, '{"via":"binary-opcode"}'))
    for v in values + ['{"via":"binary-opcode"}']:
        got = read_text(phone)
        assert got == v.encode(), f"phone got {got!r}, expected {v.encode()!r}"
    # unknown fields and push_wake on a routed frame are ignored
    binary.send(_text_frame(b'{"extra":{"a":[1]},"conn_id":' + json.dumps(cid).encode()
                            + b',"push_wake":{"platform":"fcm","token":"t"},"frame":{"ok":1},"token":"x"}'))
    assert read_text(phone) == b'{"ok":1}'


def _text_frame(payload: bytes) -> bytes:
    from relayctl import build_frame
    return build_frame(OP_TEXT, payload)


def test_close_directive_with_frame_then_no_notice(relay, server_id):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    mark = relay.log_mark()
    binary.send_text(directive(cid, 4401, '{"error":"bad token"}'))
    assert read_text(phone) == b'{"error":"bad token"}'
    expect_close(phone, 4401, b"")
    relay.wait_log("binary_forwarder_phone_closed", since=mark, conn_id=cid, close_code=4401)
    relay.wait_log("phone_unregistered", since=mark, conn_id=cid)
    # no close notice: the binary's next message is a later phone's frame
    time.sleep(0.3)
    _, cid2 = hello(relay, binary, server_id, "second")
    assert cid2 != cid


@pytest.mark.parametrize("frame_part", [None, "null"], ids=["absent", "null"])
def test_close_directive_without_frame_only_closes(relay, server_id, frame_part):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    binary.send_text(directive(cid, 4421, frame_part))
    expect_close(phone, 4421, b"")  # read_close fails on a data frame first
    time.sleep(0.2)
    _, cid2 = hello(relay, binary, server_id, "next")  # no notice came before this


def test_close_directive_legal_codes_pass_through(relay, server_id):
    binary = claim(relay, server_id)
    for code in (1000, 3000, 4408, 4999):
        phone, cid = hello(relay, binary, server_id, f"c{code}")
        binary.send_text(directive(cid, code))
        expect_close(phone, code, b"")


@pytest.mark.parametrize("code", [1005, 999])
def test_close_directive_illegal_wire_code_becomes_1011(relay, server_id, code):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    binary.send_text(directive(cid, code))
    got_code, _reason = phone.read_close()
    assert got_code == 1011, f"directive close_code {code}: phone closed with {got_code} {_reason!r}, expected 1011"
    binary.ping(b"alive")


@pytest.mark.parametrize("code", ["70000", "-1", "1.5", '"4401"', "true"])
def test_close_directive_bad_close_code_is_malformed(relay, server_id, code):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    mark = relay.log_mark()
    binary.send_text(b'{"conn_id":' + json.dumps(cid).encode() + b',"close_code":' + code.encode()
                     + b',"frame":{"dropped":1}}')
    rec = relay.wait_log("binary_forwarder_unmarshal_err", since=mark, server_id=server_id)
    assert rec.get("binary_conn_id", "").startswith(f"server-{server_id}-"), rec
    assert quiet_for(phone, 0.3) == b"", "phone received something from a malformed envelope"
    binary.ping(b"still-here")
    binary.send_text(routed(cid, '{"after":1}'))
    assert read_text(phone) == b'{"after":1}'


def test_unknown_conn_id_dropped_binary_stays(relay, server_id):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    mark = relay.log_mark()
    bogus = f"client-{server_id}-00000000" if not cid.endswith("00000000") else f"client-{server_id}-11111111"
    binary.send_text(routed(bogus, '{"lost":1}'))
    relay.wait_log("binary_forwarder_unknown_conn_id", since=mark, server_id=server_id, conn_id=bogus)
    binary.ping(b"alive")
    binary.send_text(routed(cid, '{"found":1}'))
    assert read_text(phone) == b'{"found":1}'


def test_conn_id_of_other_server_is_unknown(relay, server_id):
    other_id = server_id + "-other"
    b1 = claim(relay, server_id)
    b2 = claim(relay, other_id)
    p1, cid1 = hello(relay, b1, server_id)
    p2, cid2 = hello(relay, b2, other_id)
    mark = relay.log_mark()
    b1.send_text(routed(cid2, '{"steal":1}'))
    relay.wait_log("binary_forwarder_unknown_conn_id", since=mark, server_id=server_id, conn_id=cid2)
    mark = relay.log_mark()
    b1.send_text(directive(cid2, 4401))
    relay.wait_log("binary_forwarder_unknown_conn_id", since=mark, server_id=server_id, conn_id=cid2)
    assert quiet_for(p2, 0.3) == b"", "another server-id's binary reached this phone"
    b2.send_text(routed(cid2, '{"mine":1}'))
    assert read_text(p2) == b'{"mine":1}'
    b1.send_text(routed(cid1, '{"mine":1}'))
    assert read_text(p1) == b'{"mine":1}'


BAD_ENVELOPES = [
    b"[1,2]", b'"conn_id"', b"42", b"null", b"not json", b"",
    b'{"frame":{"a":1}}', b'{"conn_id":"","frame":{"a":1}}', b'{"conn_id":null,"frame":{"a":1}}',
    b'{"conn_id":7,"frame":{}}',
]


def test_malformed_envelopes_dropped_binary_stays(relay, server_id):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    c = json.dumps(cid).encode()
    bad = BAD_ENVELOPES + [b'{"conn_id":' + c + b"}", b'{"conn_id":' + c + b',"frame":null}',
                           b'{"conn_id":' + c + b',"close_code":0}', b'{"conn_id":' + c + b',"frame":{"a":1}']
    mark = relay.log_mark()
    for env in bad:
        binary.send_text(env)
    binary.send_text(routed(cid, '{"later":true}'))
    assert read_text(phone) == b'{"later":true}', "a later routed frame did not arrive"
    assert quiet_for(phone, 0.2) == b""
    binary.ping(b"alive")
    deadline = time.monotonic() + 3
    while len(relay.find_logs("binary_forwarder_unmarshal_err", since=mark)) < len(bad) and time.monotonic() < deadline:
        time.sleep(0.05)
    n = len(relay.find_logs("binary_forwarder_unmarshal_err", since=mark, server_id=server_id))
    assert n == len(bad), f"{n} binary_forwarder_unmarshal_err lines for {len(bad)} malformed envelopes"


@pytest.mark.parametrize("conn_id_part", ["", '"conn_id":"",', '"conn_id":null,'], ids=["absent", "empty", "null"])
def test_push_wake_dropped_when_push_off(relay, server_id, conn_id_part):
    binary = claim(relay, server_id)
    fcm_token = "fcm-device-token-" + server_id[-12:]
    mark = relay.log_mark()
    binary.send_text(('{' + conn_id_part + '"push_wake":{"platform":"fcm","token":"' + fcm_token + '"}}').encode())
    rec = relay.wait_log("binary_forwarder_push_wake_dropped", since=mark, server_id=server_id)
    assert rec.get("err") == "push is off", rec
    assert rec.get("level") == "WARN", rec
    assert fcm_token not in relay.stderr_text()
    assert quiet_for(binary, 0.2) == b"", "binary got a reply to a push wake"
    binary.ping(b"alive")
    phone, cid = hello(relay, binary, server_id)  # routing still works


# --- 4. close notices

def test_close_notice_after_forwarded_frames(relay, server_id):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id, "first")
    for i in range(5):
        phone.send_json({"seq": i})
    phone.send_close(4000, "bye")
    for i in range(5):
        env = read_env(binary)
        assert env == {"conn_id": cid, "frame": {"seq": i}}, env
    raw = read_text(binary)
    assert json.loads(raw) == {"conn_id": cid, "close_code": 4000}, raw
    assert b'"frame"' not in raw
    phone.read_close()
    phone.wait_closed(7, allow_data=True)


def test_close_notice_phone_normal_close(relay, server_id):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    phone.send_close(1000)
    assert read_env(binary) == {"conn_id": cid, "close_code": 1000}


def test_close_notice_abrupt_drop_is_1001(relay, server_id):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    phone.send_json({"last": 1})
    # RST instead of FIN: SO_LINGER 0
    phone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    phone.close()
    assert read_env(binary) == {"conn_id": cid, "frame": {"last": 1}}
    assert read_env(binary) == {"conn_id": cid, "close_code": 1001}


def test_close_notice_fin_drop_is_1001(relay, server_id):
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    phone.sock.shutdown(socket.SHUT_WR)
    assert read_env(binary) == {"conn_id": cid, "close_code": 1001}


def test_node_phone_roundtrip(relay, server_id):
    """An independent client (npm ws) as the phone."""
    from relayctl import run_wsclient
    import threading
    binary = claim(relay, server_id)
    result = {}

    def run():
        result.update(run_wsclient(relay.ws_url("/v1/client"), client_headers(server_id), [
            {"op": "send", "text": '{"from":"node"}'},
            {"op": "expect_message", "text": '{"to": "node"}', "timeout_ms": 4000},
            {"op": "close", "code": 4000},
            {"op": "expect_close"},
        ], timeout=10))

    t = threading.Thread(target=run)
    t.start()
    env = read_env(binary, timeout=8)
    assert env["frame"] == {"from": "node"}
    binary.send_text(routed(env["conn_id"], '{"to": "node"}'))
    assert read_env(binary, timeout=8) == {"conn_id": env["conn_id"], "close_code": 4000}
    t.join(12)
    assert result.get("ok"), result
