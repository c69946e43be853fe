"""Soak (issue #16): 10,000 connections churning through one relay, then everything it
held must be given back.

Four driver processes (soakdrv.py, one source address each: 127.0.0.2-5) each hold 192
binaries with 12 phones per binary: 4 phones per binary stay up the whole run and keep
a stream of frames going; 8 churn (connect, upgrade, exchange 3 frames, close 1000,
reconnect). 4 x 192 x 13 = 9,984 connections at once. Every frame makes the round trip
phone -> relay -> binary -> relay -> phone and is checked byte for byte and in order;
every phone session that ended must have given its binary exactly one close notice
(1000).

Leaks: the relay's open descriptors (/proc/<pid>/fd) must be back to exactly what the
fresh relay had once everyone has left. Its RSS cannot be compared with the fresh
relay's: pools are sized at start-up but their pages (connection slots, cached message
buffers, malloc arenas of four workers) are touched on first use and kept. So a first,
short wave of the same 10,000 connections warms them up, and the RSS after the soak
wave may exceed the RSS after the warm-up wave by SOAK_RSS_SLACK_KIB at most, whatever
its length: a leak grows with the sessions (the short run makes ~17,000 of them, `make
soak` as many as SOAK_SECONDS allows), a warmed-up pool does not. Measured here: +0.27
MiB after 20 s (17,000 sessions), +0.53 MiB after 120 s (69,000), +0.86 MiB after 300 s
(166,000); the buffer pool's cache (printed) is a small part of it, the rest is pages
of the start-up slot pools first touched when a worker reaches a new peak of
connections at once (slots are reused last-freed-first), which the pools' sizes bound.

`make test` runs this for SOAK_SECONDS (default 20) in the gcc 4-worker stage only;
`make soak` runs it for SOAK_SECONDS (default 600) by hand. The test process and every
driver stay under this host's 20,000 descriptors (the relay gets what its hard limit
allows and warns that --max-connections would need more: a production host raises
LimitNOFILE, as deploy/systemd does).
"""

import json
import os
import re
import resource
import subprocess
import sys
import time

import pytest

from relayctl import E2E_DIR, tls_enabled, wait_healthz

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))
WARMUP_SECONDS = 3.0
DRIVERS = 4
BINARIES_PER_DRIVER = 192
PHONES_PER_BINARY = 12   # of 16 allowed: a churning phone's slot frees only once the relay has seen it leave
STABLE_PER_BINARY = 4
CHURN_SESSIONS_PER_S = 150  # per driver, over its churning phones
SOAK_RSS_SLACK_KIB = 2048

_bin = os.environ.get("RELAY_BIN", "")
pytestmark = pytest.mark.skipif(
    tls_enabled() or os.environ.get("RELAY_WORKERS", "4") != "4" or re.search(r"-(asan|tsan)/", _bin) is not None,
    reason="the soak runs in the gcc 4-worker stage only (make soak runs it by hand)")


def proc_status(pid: int) -> tuple:
    """(VmRSS in KiB, open descriptors) of a process."""
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def run_wave(relay, name: str, seconds: float) -> list:
    """Run the drivers for one wave; returns their final JSON counts."""
    procs = []
    for i in range(DRIVERS):
        procs.append(subprocess.Popen(
            [sys.executable, str(E2E_DIR / "soakdrv.py"), "--host", relay.host, "--port", str(relay.port),
             "--src", f"127.0.0.{2 + i}", "--binaries", str(BINARIES_PER_DRIVER), "--phones",
             str(PHONES_PER_BINARY), "--stable", str(STABLE_PER_BINARY), "--seconds", str(seconds),
             "--churn-rate", str(CHURN_SESSIONS_PER_S), "--prefix", f"soak-{name}{i}-{os.getpid()}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for i, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=seconds + 240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"soak driver {i} ({name}) did not finish") from None
        lines = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
        final = lines[-1] if lines else {}
        assert p.returncode == 0, (f"soak driver {i} ({name}) failed (exit {p.returncode}): {final}\n"
                                   f"stderr: {err.decode(errors='replace')[-2000:]}\nrelay log:\n{relay.log_tail()}")
        results.append(final)
    return results


# each driver holds ~2,500 sockets and the relay ~10,000 plus its HTTP-phase headroom;
# they inherit this process's limits, and the relay raises its soft limit to the hard one
NOFILE_NEEDED = 12000


def test_soak_10000_connections_churning_nothing_lost_nothing_leaked(relay_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NOFILE_NEEDED:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} < {NOFILE_NEEDED}: raise it (ulimit -Hn) to run the soak")
    if soft != resource.RLIM_INFINITY and soft < NOFILE_NEEDED:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_NEEDED, hard))
    relay = relay_factory.start(metrics=True, args=["--rate-limit-burst", "0", "--max-connections-per-ip", "0",
                                                    "--max-connections", "12000"], tls=False)
    pid = relay.proc.pid
    time.sleep(0.5)  # the start-up /healthz probe's connection is gone by then
    rss0, fds0 = proc_status(pid)

    def settled():
        wait_healthz(relay, timeout=15, connected_binaries=0, connected_phones=0)
        # the last connections' descriptors close once their close handshakes finished
        deadline = time.monotonic() + 10
        while proc_status(pid)[1] > fds0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        return proc_status(pid) + (pool_cached_kib(),)

    def pool_cached_kib():
        for line in relay.metrics_text().splitlines():
            if line.startswith('pyrycode_relay_buffer_pool_bytes{state="cached"}'):
                return int(float(line.split()[-1])) // 1024
        raise AssertionError("no buffer pool gauge in the scrape")

    warm = run_wave(relay, "w", WARMUP_SECONDS)
    rss1, fds1, pool1 = settled()
    t0 = time.monotonic()
    soak = run_wave(relay, "s", SOAK_SECONDS)
    took = time.monotonic() - t0
    rss2, fds2, pool2 = settled()
    total = {k: sum(r[k] for r in soak) for k in ("connections", "frames", "sessions", "churn_sessions",
                                                   "notices", "lost_or_reordered", "corrupted", "errors")}
    print(f"soak: {total} in {took:.0f} s; relay RSS {rss0} KiB fresh, {rss1} after the warm-up, {rss2} after "
          f"the soak; descriptors {fds0} / {fds1} / {fds2}; buffer pool cache {pool1} / {pool2} KiB")
    assert total["connections"] >= 9900
    assert sum(r["connections"] for r in warm) == total["connections"]
    assert total["lost_or_reordered"] == 0 and total["corrupted"] == 0 and total["errors"] == 0, soak
    assert total["notices"] == total["sessions"]
    assert total["churn_sessions"] >= DRIVERS * BINARIES_PER_DRIVER * (PHONES_PER_BINARY - STABLE_PER_BINARY), \
        f"too little churn to call it a soak: {total}"
    assert fds1 == fds0 and fds2 == fds0, f"descriptors: {fds0} fresh, {fds1} after the warm-up, {fds2} after the soak"
    assert rss2 - rss1 <= SOAK_RSS_SLACK_KIB, \
        f"relay RSS grew by {rss2 - rss1} KiB over {total['sessions']} sessions ({rss1} -> {rss2} KiB)"
    assert not relay.find_logs(level="ERROR")
    assert relay.healthz()["status"] == "ok"
