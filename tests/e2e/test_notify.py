"""The service-manager protocol (src/core/notify.c) from outside: the test plays
systemd's side of a Type=notify unit with an abstract unix datagram socket (abstract,
so the relay running as nobody may send to it) named in $NOTIFY_SOCKET."""

import os
import signal
import socket
import time

from relayctl import claim

WATCHDOG_USEC = 200_000  # pings every 100 ms


def _manager():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"pyrelay-e2e-notify-{os.getpid()}-{time.monotonic_ns()}"
    s.bind("\0" + name)
    s.settimeout(5)
    return s, "@" + name


def _recv(s, timeout=5.0):
    s.settimeout(timeout)
    return s.recv(4096).decode()


def test_ready_watchdog_and_stopping(relay_factory, server_id):
    mgr, name = _manager()
    with mgr:
        relay = relay_factory.start(env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        assert _recv(mgr) == "READY=1"  # the first message, and the relay answers /healthz
        t0 = time.monotonic()
        pings = [_recv(mgr) for _ in range(5)]
        assert pings == ["WATCHDOG=1"] * 5
        elapsed = time.monotonic() - t0
        assert 0.25 < elapsed < 2.0, f"5 pings at half of a 200 ms watchdog took {elapsed:.2f}s"
        binary = claim(relay, server_id)  # serving while pinging
        relay.signal(signal.SIGTERM)
        rest = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "STOPPING=1" not in rest:
            rest.append(_recv(mgr))
        assert rest[-1] == "STOPPING=1", rest
        assert set(rest[:-1]) <= {"WATCHDOG=1"}, rest
        binary.close()
        assert relay.wait_exit(12) == 0


def test_watchdog_pid_of_another_process_means_no_pings(relay_factory):
    mgr, name = _manager()
    with mgr:
        relay_factory.start(env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": str(WATCHDOG_USEC),
                                 "WATCHDOG_PID": "1"})
        assert _recv(mgr) == "READY=1"
        try:
            got = _recv(mgr, timeout=0.5)
        except socket.timeout:
            got = None
        assert got is None, f"pinged although WATCHDOG_PID names another process: {got!r}"


def test_without_notify_socket_the_relay_runs_as_before(relay):
    assert relay.healthz()["status"] == "ok"
