"""Process lifecycle seen from outside: refusals at boot exit 2, SIGTERM exits 0
(reference §7.4, §7.6). The config issue owns the full flag/env table; these check the
harness's boot path and the basics every relay build must get right."""

import re
import resource
import signal
import socket

import pytest

from relayctl import free_port


def test_refuses_to_start_without_a_listen_mode(relay_factory):
    res = relay_factory.boot([])
    assert res.returncode == 2, res


@pytest.mark.parametrize("args", [["--no-such-flag"], ["--insecure-listen", "127.0.0.1:1", "positional"]],
                         ids=["unknown-flag", "positional-argument"])
def test_bad_command_line_exits_2(relay_factory, args):
    res = relay_factory.boot(args)
    assert res.returncode == 2, res


def test_sigterm_closes_idle_connections_and_exits_0(relay):
    c = relay.connect()
    assert c.request("GET", "/healthz").status == 200  # now an idle keep-alive connection
    relay.signal(signal.SIGTERM)
    c.wait_closed(2.0)
    c.close()
    assert relay.wait_exit(12) == 0
    assert relay.find_logs("shutdown complete"), relay.log_tail()


# --------------------------------------------------------------------------------------
# a listener that fails (reference §7.6): "listener failed" when it fails, then
# "listener error; draining", the drain, and exit 1


def _after_failure(res):
    msgs = [r["msg"] for r in res.log_records]
    assert res.returncode == 1, res
    assert msgs.count("listener failed") == 1, msgs
    assert "shutdown signal received; draining" not in msgs
    i = msgs.index("listener failed")
    assert msgs[i + 1:] == ["listener error; draining", "shutdown complete"], msgs
    return res.log_records[i]


@pytest.mark.parametrize("which", ["public", "metrics"])
def test_listener_bind_failure_logged_then_drained_exit_1(relay_factory, which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        public = port if which == "public" else free_port()
        metrics = port if which == "metrics" else free_port()
        res = relay_factory.boot(["--insecure-listen", f"127.0.0.1:{public}", f"--metrics-listen=127.0.0.1:{metrics}"])
    rec = _after_failure(res)
    assert rec["addr"] == f"127.0.0.1:{port}" and rec["level"] == "ERROR" and rec["err"], rec
    if which == "metrics":  # as in Go, the metrics listener was announced before it failed
        msgs = [r["msg"] for r in res.log_records]
        assert msgs.index("starting metrics listener") < msgs.index("listener failed"), msgs


def test_worker_failure_logged_when_it_happens_then_drained_exit_1(relay_factory):
    """A worker's ring is created on its own thread: with a descriptor limit that leaves
    room for the listener but not for the ring, the worker fails after main started it.
    Its failure is logged from its thread at once, before main drains."""
    port = free_port()
    args = ["--insecure-listen", f"127.0.0.1:{port}", "--metrics-listen=", "--workers", "1",
            "--max-connections", "1"]
    tried = []
    for n in range(4, 16):
        res = relay_factory.boot(args, wrapper=["prlimit", f"--nofile={n}:{n}"])
        failed = [r for r in res.log_records if r["msg"] == "listener failed"]
        tried.append((n, failed[0]["err"] if failed else res.returncode))
        if failed and "io_uring" in failed[0]["err"]:
            break
    else:
        pytest.fail(f"no descriptor limit made the worker's ring fail: {tried}")
    rec = _after_failure(res)
    assert rec["addr"] == f"127.0.0.1:{port}", rec


# --------------------------------------------------------------------------------------
# RLIMIT_NOFILE: raised to what --max-connections needs, or a warning naming the numbers


def _nofile(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def test_fd_limit_raised_to_what_max_connections_needs_or_named(relay_factory):
    # one worker each: every io_uring counts against the unprivileged user's locked memory
    args = ["--workers", "1", "--max-connections"]
    # a hard limit too low: the soft one goes up to it, and the warning says what to set
    low = relay_factory.start(args=args + ["100"], wrapper=["prlimit", "--nofile=256:4096"])
    assert _nofile(low.proc.pid) == (4096, 4096)
    rec = low.find_logs("file descriptor limit below --max-connections")
    assert len(rec) == 1 and rec[0]["level"] == "WARN" and rec[0]["value"] == "4096", rec
    m = re.search(r"raise the hard limit to (\d+) \(LimitNOFILE=(\d+) ", rec[0]["fix"])
    assert m and m.group(1) == m.group(2), rec
    want = int(m.group(1))
    assert want > 4096 + 100
    assert low.stop() == 0
    # a hard limit that allows it: the soft limit becomes exactly what is needed, quietly
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"this host's hard RLIMIT_NOFILE ({hard}) is below {want}")
    ok = relay_factory.start(args=args + ["100"], wrapper=["prlimit", f"--nofile=256:{want + 10}"])
    assert _nofile(ok.proc.pid) == (want, want + 10)
    assert not ok.find_logs("file descriptor limit below --max-connections")
    assert ok.stop() == 0
    # more connections need more: the same hard limit falls short by 100
    short = relay_factory.start(args=args + ["200"], wrapper=["prlimit", f"--nofile=256:{want + 10}"])
    assert _nofile(short.proc.pid) == (want + 10, want + 10)
    rec = short.find_logs("file descriptor limit below --max-connections")
    assert rec and f"raise the hard limit to {want + 100} " in rec[0]["fix"], rec
    assert rec[0]["fix"].endswith("or lower --max-connections to 110"), rec
