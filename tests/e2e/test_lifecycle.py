"""Graceful shutdown with live registry state: every registered connection (binaries,
phones, phones of a binary in its grace window) gets 1001 `shutting down`, the relay
exits 0 and logs `shutdown complete` (reference §2.4, §4.5, §7.6)."""

import signal
import time

from relayctl import OP_CLOSE, build_frame, client_headers, close_payload, server_headers
from relayhelp import claim, hello, pyws, register  # noqa: F401


def test_sigterm_closes_everyone_1001_and_exits_0(relay_factory, server_id, pyws):
    relay = relay_factory.start(args=["--grace-period", "30s"])
    binary = claim(relay, server_id)
    phone, cid = hello(relay, binary, server_id)
    # a binary in its grace window, with a phone still attached
    gone_id = server_id + "-gone"
    gone = claim(relay, gone_id)
    orphan = register(relay, gone_id)
    gone.close()
    relay.wait_log("server_released", server_id=gone_id)
    # independent clients too
    py_binary = pyws(relay, "/v1/server", server_headers(server_id + "-py"))
    relay.wait_log("server_claimed", server_id=server_id + "-py")
    py_phone = pyws(relay, "/v1/client", client_headers(server_id + "-py"))
    relay.wait_log("phone_registered", server_id=server_id + "-py")

    mark = relay.log_mark()
    t0 = time.monotonic()
    relay.signal(signal.SIGTERM)
    for name, conn in (("binary", binary), ("phone", phone), ("grace-window phone", orphan)):
        got = conn.read_close(timeout=5)
        assert got == (1001, b"shutting down"), f"{name}: close {got!r}"
        conn.send_quietly(build_frame(OP_CLOSE, close_payload(1001)), timeout=2)
        conn.wait_closed(5, allow_data=True)
        conn.close()  # a real client closes its socket once the handshake is done
    for name, c in (("python binary", py_binary), ("python phone", py_phone)):
        code, reason = c.wait_closed(6)
        assert (code, reason) == (1001, "shutting down"), f"{name}: close {code} {reason!r}"
    rc = relay.wait_exit(12)
    took = time.monotonic() - t0
    assert rc == 0, f"exit code {rc}; log:\n{relay.log_tail()}"
    assert took < 11, f"shutdown took {took:.1f}s (drain deadline 10 s)"
    relay.wait_log("shutdown complete", since=mark, timeout=1)
    assert not relay.find_logs("drain incomplete", since=mark)


def test_sigterm_refuses_new_connections(relay_factory, server_id):
    relay = relay_factory.start()
    binary = claim(relay, server_id)
    relay.signal(signal.SIGTERM)
    assert binary.read_close(timeout=5) == (1001, b"shutting down")
    binary.send_quietly(build_frame(OP_CLOSE, close_payload(1001)), timeout=2)
    binary.wait_closed(5, allow_data=True)
    binary.close()
    assert relay.wait_exit(12) == 0
    try:
        relay.connect(timeout=1)
    except OSError:
        pass
    else:
        raise AssertionError("relay still accepts TCP connections after exiting")
