"""Routing end to end (reference §2.2/§2.3 logs, §3 envelope, §4.6 close notice, §9).

Phone -> binary: the binary gets exactly {"conn_id":"client-<sid>-<hex8>","frame":<phone
bytes verbatim>}. Binary -> phone: the phone gets exactly the bytes of the frame value.
Close directives (the close-code tables), malformed envelopes (one table, by kind),
unknown conn_ids, push wakes with push off, close notices."""

import json
import re
import threading

import pytest

from relayctl import (LOCAL_IP, OP_BINARY, OP_CLOSE, OP_TEXT, abort, barrier, build_frame, claim, client_headers,
                      close_and_wait, close_payload, conn_id_re, directive, expect_close, expect_nothing, read_notice,
                      read_text, read_wrapped, register, route, run_wsclient, text_frames, unique_id, wait_until,
                      wrapped)

# --------------------------------------------------------------------------------------
# claims, registrations and their logs


def test_claim_and_register_logged_without_token_or_user_agent(relay, server_id):
    token = unique_id("SECRET-TOKEN")
    ua_bin = unique_id("UA-binary")
    ua_phone = unique_id("UA-phone")
    b = claim(relay, server_id, **{"User-Agent": ua_bin, "X-Pyrycode-Version": "v9.8.7 (test)"})
    rec = relay.find_logs("server_claimed", server_id=server_id)[0]
    assert rec["level"] == "INFO"
    assert rec["binary_version"] == "v9.8.7 (test)"
    assert rec["remote"] == LOCAL_IP

    p1, cid1 = register(relay, server_id, **{"X-Pyrycode-Token": token, "User-Agent": ua_phone,
                                              "X-Pyrycode-Device-Name": "Pixel 8 \"Pro\""})
    rec = relay.find_logs("phone_registered", conn_id=cid1)[0]
    assert rec["level"] == "INFO"
    assert rec["server_id"] == server_id
    assert conn_id_re(server_id).fullmatch(cid1), cid1
    assert rec["device_name"] == 'Pixel 8 "Pro"'
    assert rec["remote"] == LOCAL_IP

    p2, cid2 = register(relay, server_id, **{"X-Pyrycode-Token": token})  # no device name
    assert relay.find_logs("phone_registered", conn_id=cid2)[0]["device_name"] == ""
    assert 'device_name=""' in relay.find_logs("phone_registered", conn_id=cid2)[0]["_raw"]
    assert cid1 != cid2 and conn_id_re(server_id).fullmatch(cid2)

    # some traffic and a phone leaving, so every code path that might log has run
    p1.send_json({"x": 1})
    assert read_wrapped(b)[0] == cid1  # the conn_id the binary sees is the logged one
    close_and_wait(p1, 1000)
    assert read_notice(b) == (cid1, 1000)
    relay.wait_log("phone_unregistered", conn_id=cid1)
    text = relay.stderr_text()
    for secret in (token, ua_bin, ua_phone):
        assert secret not in text, f"{secret!r} was logged:\n{text}"
    barrier(p2)


def test_conn_id_in_envelope_matches_log_and_is_stable(relay, server_id):
    b = claim(relay, server_id)
    p1, cid1 = register(relay, server_id)
    p2, cid2 = register(relay, server_id)
    assert cid1 != cid2, "two phones got the same conn_id"
    assert conn_id_re(server_id).fullmatch(cid1) and conn_id_re(server_id).fullmatch(cid2), (cid1, cid2)
    for i in range(3):
        p1.send_json({"i": i})
        assert read_wrapped(b) == (cid1, b'{"i":%d}' % i)
        p2.send_json({"j": i})
        assert read_wrapped(b) == (cid2, b'{"j":%d}' % i)


def _msgs(relay, since, **fields):
    """The msg of every log line since `since` whose fields match."""
    return [r["msg"] for r in relay.log_records(since) if all(r.get(k) == v for k, v in fields.items())]


# How a phone's reading ends -> the err of its phone_forwarder_read_end (§3.2 step 1).
PHONE_READ_ENDS = {
    "close-frame": "peer sent a close frame",
    "fin": "EOF",
    "directive": "closed by the relay",
}


@pytest.mark.parametrize("how", list(PHONE_READ_ENDS))
def test_forwarders_log_read_end_before_their_exit_lines(relay, server_id, how):
    """§3.2/§3.3 step 1: a phone's or a binary's reading that ends logs
    phone_forwarder_read_end / binary_forwarder_read_end (with the reason in err), before
    the lines of the handler's exit: phone_unregistered, server_released."""
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    mark = relay.log_mark()
    if how == "close-frame":
        close_and_wait(p, 1000)
    elif how == "fin":
        p.sock.shutdown(2)  # FIN (and no close frame)
    else:
        directive(b, cid, 4401)
        expect_close(p, (4401, b""))
    relay.wait_log("phone_unregistered", since=mark, conn_id=cid)
    rec = relay.find_logs("phone_forwarder_read_end", since=mark, conn_id=cid)
    assert len(rec) == 1 and rec[0]["server_id"] == server_id and rec[0]["level"] == "INFO", rec
    assert rec[0]["err"] == PHONE_READ_ENDS[how], rec
    mine = _msgs(relay, mark, conn_id=cid)
    assert mine.index("phone_forwarder_read_end") < mine.index("phone_unregistered"), mine
    if how != "directive":
        assert read_notice(b) == (cid, 1000 if how == "close-frame" else 1001)

    mark = relay.log_mark()
    close_and_wait(b, 1000)
    relay.wait_log("server_released", since=mark, server_id=server_id)
    rec = relay.find_logs("binary_forwarder_read_end", since=mark, server_id=server_id)
    assert len(rec) == 1 and rec[0]["err"] == "peer sent a close frame", rec
    assert re.fullmatch(r"server-" + re.escape(server_id) + r"-[0-9a-f]{8}", rec[0]["binary_conn_id"]), rec
    mine = _msgs(relay, mark, server_id=server_id)
    assert mine == ["binary_forwarder_read_end", "server_released"], mine


def test_forwarder_that_ends_a_phone_itself_logs_no_read_end(relay, server_id):
    """The phone forwarder that ends a phone for its own reason (invalid JSON: marshal_err;
    a dead binary: send_failed) logs that line instead of read_end, as the reference's loop
    returns without reading again."""
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    mark = relay.log_mark()
    p.send_frame(OP_TEXT, b"{not json")
    expect_close(p, (1000, b""))
    relay.wait_log("phone_unregistered", since=mark, conn_id=cid)
    assert _msgs(relay, mark, conn_id=cid) == ["phone_forwarder_marshal_err", "phone_unregistered"]
    assert read_notice(b) == (cid, 1001)
    # a phone that sends while its binary is in grace
    q, qcid = register(relay, server_id)
    close_and_wait(b, 1000)
    relay.wait_log("server_released", server_id=server_id)
    mark = relay.log_mark()
    q.send_json({"late": 1})
    expect_close(q, (1000, b""))
    relay.wait_log("phone_unregistered", since=mark, conn_id=qcid)
    assert _msgs(relay, mark, conn_id=qcid) == ["phone_forwarder_send_failed", "phone_close_notice_send_failed",
                                                 "phone_unregistered"]


# --------------------------------------------------------------------------------------
# phone -> binary

VALID_PHONE_PAYLOADS = [
    b'{"a":1}',
    b'  {"a" : [1, 2,\n 3],\t"b":{ }}\r\n ',  # whitespace inside and around kept verbatim
    b' \n {"a":1} \t\r\n',
    b'{ "type" : "noise_init",\n\t"payload":"AAEC", "n" : [1, 2 ,3] }',
    b"[]",
    b"[ ]",
    b'"just a string"',
    b"-1.5e+3",
    b"0",
    b"42",
    b"true",
    b"false",
    b"null",
    b'{"html":"<a href=\\"x\\">&amp;</a>","sep":"\xe2\x80\xa8\xe2\x80\xa9","esc":"\\u003c\\n\\/"}',
    b'{"u":"\xc3\xa9\\u00e9 <>&"}',
    b'{"utf8":"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80"}',
    b'{"dup":1,"dup":2}',
    b'{"type":"handshake","payload":"QUJDREVGRw=="}',
]


def test_phone_frames_wrapped_verbatim(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    assert conn_id_re(server_id).fullmatch(cid), cid
    for payload in VALID_PHONE_PAYLOADS:
        p.send_frame(OP_TEXT, payload)
        got = read_text(b)
        assert got == wrapped(cid, payload), f"sent {payload!r}, binary got {got!r}"
        json.loads(got)  # and it is one valid JSON document


def test_phone_binary_opcode_and_fragmented_message(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    p.send_frame(OP_BINARY, b'{"bin" : true}')
    assert read_text(b) == wrapped(cid, b'{"bin" : true}')  # read_text: it arrives as TEXT
    p.send_frame(OP_BINARY, b'{"bin": [true]}')
    assert read_text(b) == wrapped(cid, b'{"bin": [true]}')
    msg = b'{"frag":"' + b"x" * 300 + b'"}'
    p.send(text_frames(msg, [1, 10, 100]))
    assert read_text(b) == wrapped(cid, msg)
    p.send(text_frames(msg, [5, 5], opcode=OP_BINARY))
    assert read_text(b) == wrapped(cid, msg)
    barrier(p)


def test_phone_max_size_frame_wrapped_whole(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    payload = b'"' + b"a" * (256 * 1024 - 2) + b'"'  # exactly 256 KiB, the inbound limit
    p.send_frame(OP_TEXT, payload)
    got = read_text(b, timeout=10)
    assert len(got) > 256 * 1024 and got == wrapped(cid, payload)


def test_phone_deeply_nested_json_forwarded(relay, server_id):
    # Valid JSON is forwarded whatever its shape; Go's decoder accepts nesting to 10000.
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    payload = b"[" * 1000 + b"]" * 1000
    p.send_frame(OP_TEXT, payload)
    assert read_text(b) == wrapped(cid, payload)


INVALID_PHONE_PAYLOADS = [
    pytest.param(OP_TEXT, b"", id="empty"),
    pytest.param(OP_TEXT, b"{", id="truncated"),
    pytest.param(OP_TEXT, b'{"broken": ', id="truncated-after-colon"),
    pytest.param(OP_TEXT, b"nope", id="bare-word"),
    pytest.param(OP_TEXT, b'{"a":1} x', id="trailing-garbage"),
    pytest.param(OP_TEXT, b'{"a":1}{"b":2}', id="two-values"),
    pytest.param(OP_TEXT, b"{} {}", id="two-values-spaced"),
    pytest.param(OP_TEXT, b"[1,]", id="trailing-comma"),
    pytest.param(OP_TEXT, b"{'a':1}", id="single-quotes"),
    pytest.param(OP_TEXT, b"NaN", id="nan"),
    pytest.param(OP_BINARY, b'"\xff\xfe"', id="binary-invalid-utf8"),
    pytest.param(OP_BINARY, b'{"s":"\xff\xfe"}', id="binary-invalid-utf8-in-object"),
    pytest.param(OP_BINARY, b"", id="binary-empty"),
]


@pytest.mark.parametrize("opcode,payload", INVALID_PHONE_PAYLOADS)
def test_phone_invalid_json_disconnects_phone_and_notifies_binary(relay, server_id, opcode, payload):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    sibling, scid = register(relay, server_id)
    p.send_json({"before": 1})
    assert read_wrapped(b) == (cid, b'{"before":1}')
    mark = relay.log_mark()
    p.send_frame(opcode, payload)
    expect_close(p, (1000, b""))
    rec = relay.wait_log("phone_forwarder_marshal_err", since=mark, conn_id=cid)
    assert rec["level"] == "WARN" and rec["server_id"] == server_id
    assert read_notice(b) == (cid, 1001)
    # nothing of the invalid payload ever reached the binary; the sibling is unaffected
    sibling.send_json({"still": "here"})
    assert read_wrapped(b) == (scid, b'{"still":"here"}')
    route(b, scid, b"1")
    assert read_text(sibling) == b"1"


# --------------------------------------------------------------------------------------
# binary -> phone: routed frames


def test_routed_frames_delivered_as_exact_bytes(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    q = json.dumps(cid).encode()
    cases = [
        # (envelope bytes, what the phone must get)
        (b'{"conn_id":' + q + b',"frame":{"x" : [1, 2]}}', b'{"x" : [1, 2]}'),
        (b'{"conn_id":' + q + b',"frame":{ "k" : [1,  2],\n "s":"\\u00e9\\n" }}',
         b'{ "k" : [1,  2],\n "s":"\\u00e9\\n" }'),
        (b' {\n "conn_id" : ' + q + b' ,\t"frame" :  {"a":1}  }\n', b'{"a":1}'),
        (b'{"frame":[true,null],"conn_id":' + q + b"}", b"[true,null]"),
        (b'{"conn_id":' + q + b',"frame":"s\\"q\\\\ \\u00e9 \xc3\xa9"}', b'"s\\"q\\\\ \\u00e9 \xc3\xa9"'),
        (b'{"conn_id":' + q + b',"frame":"str"}', b'"str"'),
        (b'{"conn_id":' + q + b',"frame":{"u":"\xc3\xa9 <>&"}}', b'{"u":"\xc3\xa9 <>&"}'),
        (b'{"conn_id":' + q + b',"frame":-0.5E-7}', b"-0.5E-7"),
        (b'{"conn_id":' + q + b',"frame":-1.5e3}', b"-1.5e3"),
        (b'{"conn_id":' + q + b',"frame":false}', b"false"),
        (b'{"conn_id":' + q + b',"frame":{}}', b"{}"),
        (b'{"conn_id":' + q + b',"frame":[]}', b"[]"),
        # unknown fields ignored, the legacy token ignored
        (b'{"token":"legacy","conn_id":' + q + b',"extra":[1,{"z":null}],"frame":5}', b"5"),
        # close_code 0 is not a directive
        (b'{"conn_id":' + q + b',"close_code":0,"frame":{"zero":0}}', b'{"zero":0}'),
        # a push_wake field on a routed frame is ignored
        (b'{"conn_id":' + q + b',"frame":7,"push_wake":{"platform":"fcm","token":"t"}}', b"7"),
        (b'{"extra":{"a":[1]},"conn_id":' + q + b',"push_wake":{"platform":"fcm","token":"t"},"frame":{"ok":1},'
         b'"token":"x"}', b'{"ok":1}'),
    ]
    for env, want in cases:
        b.send_frame(OP_TEXT, env)
        assert read_text(p) == want, f"envelope {env!r}"
    # binary opcode and fragmented envelopes are fine too
    b.send_frame(OP_BINARY, b'{"conn_id":' + q + b',"frame":{"bin":1}}')
    assert read_text(p) == b'{"bin":1}'
    b.send(text_frames(b'{"conn_id":' + q + b',"frame":{"frag":2}}', [3, 7, 11]))
    assert read_text(p) == b'{"frag":2}'
    barrier(b)


def test_routed_large_frame(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    head = b'{"conn_id":' + json.dumps(cid).encode() + b',"frame":'
    frame = b'"' + b"z" * (256 * 1024 - len(head) - 1 - 2) + b'"'
    env = head + frame + b"}"
    assert len(env) == 256 * 1024
    b.send_frame(OP_TEXT, env)
    assert read_text(p, timeout=10) == frame


def test_routing_reaches_only_the_addressed_phone(relay, server_id):
    b = claim(relay, server_id)
    p1, cid1 = register(relay, server_id)
    p2, cid2 = register(relay, server_id)
    route(b, cid2, b'{"to":2}')
    route(b, cid1, b'{"to":1}')
    assert read_text(p1) == b'{"to":1}'
    assert read_text(p2) == b'{"to":2}'
    expect_nothing(p1, 0.2)
    expect_nothing(p2, 0.1)


# --------------------------------------------------------------------------------------
# binary -> phone: close directives


def test_close_directive_with_frame_then_close_and_no_notice(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    mark = relay.log_mark()
    directive(b, cid, 4401, b'{"type":"error","code":"bad token"}')
    assert read_text(p) == b'{"type":"error","code":"bad token"}'
    expect_close(p, (4401, b""))
    relay.wait_log("binary_forwarder_phone_closed", since=mark, conn_id=cid, close_code=4401)
    relay.wait_log("phone_unregistered", since=mark, conn_id=cid)
    # no close notice for a phone the binary closed itself
    expect_nothing(b, 0.3)


@pytest.mark.parametrize("frame_part", [b',"frame":null', b""], ids=["frame-null", "no-frame"])
def test_close_directive_without_frame_only_closes(relay, server_id, frame_part):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    b.send_frame(OP_TEXT, b'{"conn_id":' + json.dumps(cid).encode() + b',"close_code":4421' + frame_part + b"}")
    expect_close(p, (4421, b""))  # read_close fails on any data frame before the close
    expect_nothing(b, 0.3)


def test_close_directive_after_frames_keeps_order(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    for i in range(20):
        route(b, cid, b'{"n":%d}' % i)
    directive(b, cid, 4408, b'{"last":true}')
    route(b, cid, b'{"after":"dropped"}')
    for i in range(20):
        assert read_text(p) == b'{"n":%d}' % i
    assert read_text(p) == b'{"last":true}'
    expect_close(p, (4408, b""))
    expect_nothing(b, 0.3)


# close codes a directive may carry, which reach the phone unchanged (§2.4)
LEGAL_CLOSE_CODES = [1000, 1001, 1003, 1008, 3000, 4000, 4408, 4999]


@pytest.mark.parametrize("code", LEGAL_CLOSE_CODES)
def test_close_directive_legal_codes_pass_through(relay, server_id, code):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    directive(b, cid, code)
    expect_close(p, (code, b""))
    expect_nothing(b, 0.2)


# integer close codes RFC 6455 forbids on the wire: the phone gets 1011 instead (§2.4);
# with a frame (sent first) and without one
ILLEGAL_CLOSE_CODES = (
    [pytest.param(code, b'{"bye":1}', id=str(code)) for code in (1, 999, 1005, 1006, 1015, 2000, 2999, 5000, 65535)]
    + [pytest.param(code, None, id=f"{code}-no-frame") for code in (999, 1005)]
)


@pytest.mark.parametrize("code,frame", ILLEGAL_CLOSE_CODES)
def test_close_directive_illegal_wire_code_becomes_1011(relay, server_id, code, frame):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    directive(b, cid, code, frame)
    if frame is not None:
        assert read_text(p) == frame
    got = p.read_close()
    assert got[0] == 1011, f"directive close_code {code}: phone got close {got!r}, expected 1011"
    p.send_quietly(build_frame(OP_CLOSE, close_payload(1011)))
    p.wait_closed(6, allow_data=True)
    expect_nothing(b, 0.2)


# --------------------------------------------------------------------------------------
# binary -> phone: envelopes that are dropped


def test_unknown_conn_id_dropped_binary_stays(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    ghost = f"client-{server_id}-00000000" if not cid.endswith("00000000") else f"client-{server_id}-ffffffff"
    mark = relay.log_mark()
    route(b, ghost, b'{"lost":1}')
    rec = relay.wait_log("binary_forwarder_unknown_conn_id", since=mark, conn_id=ghost)
    assert rec["level"] == "WARN" and rec["server_id"] == server_id
    directive(b, ghost, 4401, b"1")
    route(b, "not-even-a-conn-id", b"2")
    relay.wait_log("binary_forwarder_unknown_conn_id", since=mark, conn_id="not-even-a-conn-id")
    barrier(b)  # the binary is not told and not disconnected
    route(b, cid, b'{"ok":true}')
    assert read_text(p) == b'{"ok":true}'


def test_conn_id_of_another_server_is_unknown(relay, server_id):
    other = unique_id("other")
    ba = claim(relay, server_id)
    bb = claim(relay, other)
    pa, cida = register(relay, server_id)
    pb, cidb = register(relay, other)
    mark = relay.log_mark()
    route(bb, cida, b'{"cross":1}')
    rec = relay.wait_log("binary_forwarder_unknown_conn_id", since=mark, conn_id=cida)
    assert rec["server_id"] == other
    mark = relay.log_mark()
    directive(bb, cida, 4401)
    relay.wait_log("binary_forwarder_unknown_conn_id", since=mark, server_id=other, conn_id=cida)
    expect_nothing(pa, 0.3)  # neither the frame nor the close reached the phone
    barrier(bb)
    # each binary still reaches its own phone
    route(bb, cidb, b'{"mine":1}')
    assert read_text(pb) == b'{"mine":1}'
    route(ba, cida, b'{"own":1}')
    assert read_text(pa) == b'{"own":1}'


# Envelopes the relay must drop (binary_forwarder_unmarshal_err, nothing to any phone, the
# binary stays), by kind of fault. "<cid>" stands for the JSON-quoted conn_id of a
# registered phone. A close_code that is not a valid integer must not let an envelope's
# frame through: the variants with {"dropped":1} check that.
MALFORMED_ENVELOPES = [
    pytest.param([b""], id="empty"),
    pytest.param([b"not json"], id="not-json"),
    pytest.param([b"[]", b"[1,2]"], id="top-level-array"),
    pytest.param([b'"str"', b'"conn_id"'], id="top-level-string"),
    pytest.param([b"123", b"42"], id="top-level-number"),
    pytest.param([b"null"], id="top-level-null"),
    pytest.param([b'{"conn_id":<cid>,"frame":{', b'{"conn_id":<cid>,"frame":{"a":1}'], id="truncated"),
    pytest.param([b'{"conn_id":<cid>,"frame":1}x'], id="trailing-garbage"),
    pytest.param([b'{"conn_id":<cid>,"frame":1}{"conn_id":<cid>,"frame":2}'], id="two-values"),
    pytest.param([b'{"frame":1}', b'{"frame":{"a":1}}'], id="conn-id-missing"),
    pytest.param([b'{"conn_id":"","frame":1}', b'{"conn_id":"","frame":{"a":1}}'], id="conn-id-empty"),
    pytest.param([b'{"conn_id":null,"frame":1}', b'{"conn_id":null,"frame":{"a":1}}'], id="conn-id-null"),
    pytest.param([b'{"conn_id":5,"frame":1}', b'{"conn_id":7,"frame":{}}', b'{"conn_id":["x"],"frame":1}'],
                 id="conn-id-not-a-string"),
    pytest.param([b'{"conn_id":<cid>}', b'{"conn_id":<cid>,"frame":null}'], id="neither-frame-nor-close-code"),
    pytest.param([b'{"conn_id":<cid>,"close_code":0}', b'{"conn_id":<cid>,"close_code":0,"frame":null}'],
                 id="close-code-0-without-frame"),
    pytest.param([b'{"conn_id":<cid>,"close_code":-1,"frame":1}',
                  b'{"conn_id":<cid>,"close_code":-1,"frame":{"dropped":1}}'], id="close-code-negative"),
    pytest.param([b'{"conn_id":<cid>,"close_code":1.5,"frame":1}', b'{"conn_id":<cid>,"close_code":4401.0}',
                  b'{"conn_id":<cid>,"close_code":1.5,"frame":{"dropped":1}}'], id="close-code-fraction"),
    pytest.param([b'{"conn_id":<cid>,"close_code":70000}', b'{"conn_id":<cid>,"close_code":65536,"frame":1}',
                  b'{"conn_id":<cid>,"close_code":70000,"frame":{"dropped":1}}'], id="close-code-over-65535"),
    pytest.param([b'{"conn_id":<cid>,"close_code":"4401"}',
                  b'{"conn_id":<cid>,"close_code":"4401","frame":{"dropped":1}}'], id="close-code-string"),
    pytest.param([b'{"conn_id":<cid>,"close_code":true}',
                  b'{"conn_id":<cid>,"close_code":true,"frame":{"dropped":1}}'], id="close-code-bool"),
    pytest.param([b'{"conn_id":<cid>,"close_code":null}'], id="close-code-null"),
]


def _fill(variants, cid: str) -> list:
    return [v.replace(b"<cid>", json.dumps(cid).encode()) for v in variants]


@pytest.mark.parametrize("variants", MALFORMED_ENVELOPES)
def test_malformed_envelope_dropped_binary_stays(relay, server_id, variants):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    for i, env in enumerate(_fill(variants, cid)):
        mark = relay.log_mark()
        b.send_frame(OP_TEXT, env)
        try:
            rec = relay.wait_log("binary_forwarder_unmarshal_err", since=mark, timeout=2)
        except AssertionError:
            raise AssertionError(f"no binary_forwarder_unmarshal_err for envelope {env!r}; log:\n"
                                 + relay.log_tail(10)) from None
        assert rec["level"] == "WARN" and rec["server_id"] == server_id, rec
        assert rec.get("binary_conn_id", "").startswith(f"server-{server_id}-"), rec
        barrier(b, tag=b"b%d" % i)  # not disconnected, and nothing came back
        n = len(relay.find_logs("binary_forwarder_unmarshal_err", since=mark))
        assert n == 1, f"{n} binary_forwarder_unmarshal_err lines for envelope {env!r}"
        if len(env) >= 8:
            assert env.decode("utf-8", "replace") not in relay.stderr_text(), f"envelope {env!r} was logged"
    # nothing reached the phone, which is still registered: the next valid frame is the first it sees
    route(b, cid, b'{"valid":"after"}')
    assert read_text(p) == b'{"valid":"after"}'
    barrier(p)


def test_malformed_envelopes_in_one_burst_all_dropped_binary_stays(relay, server_id):
    """Every malformed envelope of the table in one write, then a valid one: each is
    dropped on its own (one log line each) and the stream stays in step."""
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    bad = [env for param in MALFORMED_ENVELOPES for env in _fill(param.values[0], cid)]
    mark = relay.log_mark()
    b.send(b"".join(build_frame(OP_TEXT, env) for env in bad) + build_frame(OP_TEXT, wrapped(cid, b'{"later":true}')))
    assert read_text(p) == b'{"later":true}', "a later routed frame did not arrive"
    expect_nothing(p, 0.2)
    barrier(b)

    def count():
        return len(relay.find_logs("binary_forwarder_unmarshal_err", since=mark, server_id=server_id))
    try:
        wait_until(lambda: count() >= len(bad), 3, what="one log line per malformed envelope")
    except TimeoutError:
        pass
    assert count() == len(bad), f"{count()} binary_forwarder_unmarshal_err lines for {len(bad)} malformed envelopes"


@pytest.mark.parametrize("conn_id_part", [b"", b'"conn_id":"",', b'"conn_id":null,'], ids=["absent", "empty", "null"])
def test_push_wake_dropped_when_push_off(relay, server_id, conn_id_part):
    b = claim(relay, server_id)
    fcm_token = "fcm-device-token-" + server_id[-12:]
    mark = relay.log_mark()
    b.send_frame(OP_TEXT, b"{" + conn_id_part + b'"push_wake":{"platform":"fcm","token":"' + fcm_token.encode() + b'"}}')
    rec = relay.wait_log("binary_forwarder_push_wake_dropped", since=mark, server_id=server_id)
    assert rec.get("err") == "push is off", rec
    assert rec.get("level") == "WARN", rec
    assert fcm_token not in relay.stderr_text()
    expect_nothing(b, 0.2)  # no reply to a push wake, and the binary stays
    # routing still works
    p, cid = register(relay, server_id)
    p.send_json({"tag": "hello"})
    assert read_wrapped(b) == (cid, b'{"tag":"hello"}')


# --------------------------------------------------------------------------------------
# close notices


def test_close_notice_after_every_forwarded_frame(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    for i in range(5):
        p.send_json({"seq": i})
    p.send_close(4000, "bye")
    for i in range(5):
        assert read_wrapped(b) == (cid, b'{"seq":%d}' % i)
    assert read_notice(b) == (cid, 4000)
    code, _ = p.read_close()
    assert code == 4000  # the relay echoes the phone's code
    p.wait_closed(5, allow_data=True)
    expect_nothing(b, 0.2)


@pytest.mark.parametrize("code", [1000, 1001, 4001, 4999])
def test_close_notice_carries_phone_close_code(relay, server_id, code):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    close_and_wait(p, code)
    assert read_notice(b) == (cid, code)


def test_close_notice_for_close_without_status_is_1001(relay, server_id):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    close_and_wait(p, None)
    assert read_notice(b) == (cid, 1001)


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_close_notice_for_abrupt_drop_is_1001(relay, server_id, how):
    b = claim(relay, server_id)
    p, cid = register(relay, server_id)
    p.send_json({"last": 1})
    if how == "rst":
        abort(p)
    else:
        p.sock.shutdown(1)
    assert read_wrapped(b) == (cid, b'{"last":1}')
    assert read_notice(b) == (cid, 1001)


def test_close_notice_one_per_phone_with_its_own_conn_id(relay, server_id):
    b = claim(relay, server_id)
    phones = [register(relay, server_id) for _ in range(4)]
    for i, (p, cid) in enumerate(phones):
        close_and_wait(p, 4100 + i)
    got = {read_notice(b) for _ in phones}
    assert got == {(cid, 4100 + i) for i, (_, cid) in enumerate(phones)}
    expect_nothing(b, 0.2)


def test_node_ws_phone_roundtrip_and_notice(relay, server_id):
    """The envelope contract seen through a real client library (npm ws)."""
    b = claim(relay, server_id)
    res = {}

    def node_phone():
        res["r"] = run_wsclient(relay.ws_url("/v1/client"), client_headers(server_id, device_name="node"), [
            {"op": "send", "text": '{"from" : "node"}'},
            {"op": "expect_message", "text": '{"to" : "node"}', "timeout_ms": 5000},
            {"op": "close", "code": 4002},
            {"op": "expect_close", "code": 4002},
        ], timeout=10)

    t = threading.Thread(target=node_phone, daemon=True)
    t.start()
    cid, frame = read_wrapped(b, timeout=8)
    assert frame == b'{"from" : "node"}'
    route(b, cid, b'{"to" : "node"}')
    assert read_notice(b, timeout=8) == (cid, 4002)
    t.join(10)
    assert res["r"]["ok"], res["r"]


# --------------------------------------------------------------------------------------
# server-ids that need escaping, concurrent phones


@pytest.mark.parametrize("sid_part", ['quote"back\\slash', "sp ace\tand-tab", "utf8-\xe9\u4e2d", "x" * 1000],
                         ids=["quote-backslash", "space-tab", "utf8", "long"])
def test_conn_id_json_escaped_for_any_server_id(relay, sid_part):
    """conn_id embeds the server-id verbatim and is JSON-string-escaped in envelopes (§2.1,
    §3.5); the binary routes back with the decoded conn_id."""
    sid = unique_id("e") + "-" + sid_part
    hb = [("X-Pyrycode-Server", sid), ("X-Pyrycode-Version", "1"), ("User-Agent", "ua")]
    hp = [("X-Pyrycode-Server", sid), ("X-Pyrycode-Token", "t"), ("User-Agent", "ua")]
    enc = lambda h: [(k, v.encode("utf-8").decode("latin-1")) for k, v in h]  # noqa: E731 - raw UTF-8 bytes
    b = relay.ws("/v1/server", enc(hb))
    barrier(b)  # the claim is done before the binary's first frame is read
    p = relay.ws("/v1/client", enc(hp))
    p.send_json({"hi": 1})
    raw = read_text(b)
    env = json.loads(raw)
    assert list(env) == ["conn_id", "frame"] and env["frame"] == {"hi": 1}, raw
    assert conn_id_re(sid).fullmatch(env["conn_id"]), env["conn_id"]
    if len(sid) < 200:  # (the relay shortens very long log values)
        assert relay.wait_log("phone_registered", server_id=sid)["conn_id"] == env["conn_id"]
    route(b, env["conn_id"], b'{"back":1}')
    assert read_text(p) == b'{"back":1}'
    close_and_wait(p, 4001)
    assert read_notice(b) == (env["conn_id"], 4001)


def test_concurrent_phones_frames_never_interleave(relay, server_id):
    """Frames of many phones reach the binary whole (one writer at a time, §3.2)."""
    b = claim(relay, server_id)
    phones = [register(relay, server_id) for _ in range(4)]
    payloads = {cid: [b'{"p":"%s","i":%d,"pad":"%s"}' % (cid[-8:].encode(), i, b"y" * (150 * 1024))
                      for i in range(5)] for _, cid in phones}

    def blast(conn, cid):
        conn.send(b"".join(build_frame(OP_TEXT, pl) for pl in payloads[cid]), timeout=15)

    threads = [threading.Thread(target=blast, args=pc, daemon=True) for pc in phones]
    for t in threads:
        t.start()
    seen = {cid: 0 for _, cid in phones}
    for _ in range(20):
        cid, frame = read_wrapped(b, timeout=10)
        assert frame == payloads[cid][seen[cid]], f"frame {seen[cid]} of {cid} damaged or out of order"
        seen[cid] += 1
    for t in threads:
        t.join(5)
    assert all(v == 5 for v in seen.values()), seen
