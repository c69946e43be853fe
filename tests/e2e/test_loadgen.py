"""Smoke tests of the benchmark tools: tools/loadgen against the relay and tools/rawfwd.

Each case runs loadgen for about 2 s closed loop and checks its JSON line: frames went
both ways and nothing was lost, reordered or corrupted. The same shapes also run through
rawfwd (loadgen --raw), the raw ceiling the benchmarks compare the relay with. With
--threads the generator runs several loops and merges their results; those cases check
that the merged figures add up exactly, and that a thread count out of range is refused.
--mode handshakes (connection churn: TLS handshake + upgrade + close, over and over) runs
against a relay terminating TLS itself, and its counts are checked against each other and
against the relay's own metrics.

The tools come from the relay's build directory (`make` builds them next to the relay:
build/<variant>/loadgen and rawfwd), or LOADGEN_BIN / RAWFWD_BIN; without either,
build/gcc/.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from relayctl import REPO_ROOT, free_port, tls_material, unique_id, wait_until

LOADGEN_TIMEOUT_S = 30.0  # loadgen stops by itself after ~3 s; this only guards a hang
RAWFWD_READY_TIMEOUT_S = 5.0
RAWFWD_STOP_TIMEOUT_S = 5.0
TIME_ARGS = ["--warmup", "0.3", "--duration", "2", "--drain", "2", "--connect-timeout", "10", "--quiet"]
RUN_ARGS = ["--mode", "closed", "--window", "1", *TIME_ARGS]
# with the once-a-second progress line, which the main thread gathers from the loops
RUN_ARGS_PROGRESS = [a for a in RUN_ARGS if a != "--quiet"]
SHAPES = [(1, 2), (10, 2)]  # (binaries, phones per binary)
THREADS_MAX = 64  # LG_THREADS_MAX in tools/loadgen/lg.h
USAGE_TIMEOUT_S = 10.0  # a refused command line exits at once
EXIT_USAGE = 2
HS_ARGS = ["--mode", "handshakes", *TIME_ARGS]
HS_SLOTS, HS_THREADS = 8, 2  # connections at a time, split over the generator's loops
METRICS_SETTLE_S = 5.0  # counters land a loop iteration after the event
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$')


def _tool(name: str, env_var: str, relay_bin: str) -> str:
    candidates = [os.environ.get(env_var), str(Path(relay_bin).parent / name), str(REPO_ROOT / "build" / "gcc" / name)]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(Path(c).resolve())
    pytest.fail(f"{name} not found next to the relay or in build/gcc (set {env_var}, or build it: make CC=gcc)",
                pytrace=False)


@pytest.fixture(scope="module")
def loadgen_bin(relay_bin) -> str:
    return _tool("loadgen", "LOADGEN_BIN", relay_bin)


@pytest.fixture(scope="module")
def rawfwd_bin(relay_bin) -> str:
    return _tool("rawfwd", "RAWFWD_BIN", relay_bin)


def run_loadgen_with_stderr(loadgen: str, url: str, binaries: int, phones: int, extra=(),
                            base=RUN_ARGS) -> tuple:
    """Run loadgen to its end; (its JSON line, its stderr). Fails unless it exits 0."""
    argv = [loadgen, "--url", url, "--binaries", str(binaries), "--phones", str(phones),
            "--server-prefix", unique_id("lg") + "-", *base, *extra]
    if url.startswith("wss:"):
        argv += ["--ca", tls_material()[0]]
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=LOADGEN_TIMEOUT_S)
    err = p.stderr.decode("utf-8", "replace")
    lines = [l for l in p.stdout.decode("utf-8", "replace").splitlines() if l.startswith("{")]
    assert len(lines) == 1, f"loadgen printed {len(lines)} JSON lines (rc={p.returncode}); stderr:\n{err[-3000:]}"
    js = json.loads(lines[0])
    summary = f"loadgen rc={p.returncode} {json.dumps(js)}\nstderr:\n{err[-3000:]}"
    assert p.returncode == 0, summary
    return js, err


def run_loadgen(loadgen: str, url: str, binaries: int, phones: int, extra=(), base=RUN_ARGS) -> dict:
    return run_loadgen_with_stderr(loadgen, url, binaries, phones, extra, base)[0]


def check_result(js: dict, binaries: int, phones: int):
    assert js["connections"] == js["connections_target"] == binaries * (1 + phones), js
    for k in ("frames_sent", "frames_p2b", "frames_b2p", "round_trips", "lat_samples"):
        assert js[k] > 0, (k, js)
    for k in ("errors", "lost", "reordered", "corrupted"):
        assert js[k] == 0, (k, js)
    assert js["ok"] is True, js
    assert 0 < js["lat_p50_us"] <= js["lat_p99_us"] <= js["lat_max_us"], js


@pytest.mark.parametrize("binaries,phones", SHAPES, ids=[f"{b}x{p}" for b, p in SHAPES])
def test_loadgen_through_relay(relay_factory, loadgen_bin, binaries, phones):
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    js = run_loadgen(loadgen_bin, relay.ws_url(""), binaries, phones)
    check_result(js, binaries, phones)
    assert js["transport"] == ("wss" if relay.tls else "ws") and js["mode"] == "closed"


@pytest.fixture
def rawfwd(rawfwd_bin, tmp_path):
    """A rawfwd on a free port; stopped with SIGTERM at teardown (exit 0 expected)."""
    for _attempt in range(5):
        port = free_port()
        log = open(tmp_path / f"rawfwd-{port}.log", "wb")
        proc = subprocess.Popen([rawfwd_bin, "--listen", f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)
        deadline = time.monotonic() + RAWFWD_READY_TIMEOUT_S
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                # a connection that never says hello is harmless to rawfwd
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    ready = True
                    break
            except OSError:
                time.sleep(0.02)
        if ready:
            break
        proc.kill()
        proc.wait(5)
        log.close()
    else:
        pytest.fail("rawfwd did not start listening", pytrace=False)
    yield port
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(RAWFWD_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        rc = "killed after SIGTERM timeout"
    log.close()
    text = (tmp_path / f"rawfwd-{port}.log").read_text(errors="replace")
    assert rc == 0, f"rawfwd exit {rc}; log:\n{text[-3000:]}"


@pytest.mark.parametrize("binaries,phones", SHAPES, ids=[f"{b}x{p}" for b, p in SHAPES])
def test_loadgen_through_rawfwd(rawfwd, loadgen_bin, binaries, phones):
    js = run_loadgen(loadgen_bin, f"tcp://127.0.0.1:{rawfwd}", binaries, phones, extra=["--raw"])
    check_result(js, binaries, phones)
    assert js["transport"] == "raw"


def test_open_loop_overload_is_latency_not_errors(relay_factory, loadgen_bin):
    """Open loop far beyond capacity (16 KiB frames at 500,000/s from one phone): the
    generator holds due frames back while 1 MiB of them is unanswered, instead of putting
    more than the relay's 4 MiB per-phone delivery budget in flight (which gets a phone
    closed with 1011). The overload shows as held frames and latency, not as errors."""
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    js = run_loadgen(loadgen_bin, relay.ws_url(""), 1, 1,
                     extra=["--mode", "open", "--rate", "500000", "--size", "16384"], base=TIME_ARGS)
    assert js["connections"] == js["connections_target"] == 2, js
    for k in ("errors", "errors_closed", "lost", "reordered", "corrupted"):
        assert js[k] == 0, (k, js)
    assert js["frames_p2b"] > 0 and js["round_trips"] > 0 and js["open_held"] > 0, js
    assert js["open_backlog_max"] > 1000, js  # 8 GB/s of frames cannot all go out


def test_threads_merge_exactly_through_relay(relay_factory, loadgen_bin):
    """--threads 2, closed loop, window 1: two loops with two server-ids each (a binary and
    its phones on one thread), their figures merged. Every frame a phone receives inside
    the window releases its next one at that same instant, so per phone, and hence in the
    merged sum, frames sent in the window == frames received back in it; and each frame
    sent in the window is timed once it returns (the drain waits for all of them), so
    the merged histogram holds exactly frames_sent samples. Progress lines are on, so the
    hand-over of the loops' running figures to the main thread is exercised too (run
    with a ThreadSanitizer loadgen as LOADGEN_BIN to check it for races)."""
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    binaries, phones = 4, 2
    js, err = run_loadgen_with_stderr(loadgen_bin, relay.ws_url(""), binaries, phones,
                                      extra=["--threads", "2"], base=RUN_ARGS_PROGRESS)
    check_result(js, binaries, phones)
    assert ", 2 threads" in err, err[-2000:]
    assert re.search(r"loadgen: +[0-9.]+s measure +open 12 +rt/s [1-9]", err), err[-2000:]
    assert js["frames_sent"] == js["frames_b2p"] == js["round_trips"] == js["lat_samples"], js
    # the binaries' count may differ only by the frames crossing the window's edges
    assert abs(js["frames_p2b"] - js["frames_sent"]) <= binaries * phones, js


def test_threads_split_open_loop_rate(relay_factory, loadgen_bin):
    """Open loop over 2 threads: each drives half the phones at half the rate, so the run
    as a whole intends exactly --rate frames per second of the window."""
    relay = relay_factory.start(args=["--rate-limit-burst", "0"])
    rate, duration_s, threads = 4000, 2, 2
    js = run_loadgen(loadgen_bin, relay.ws_url(""), 4, 2,
                     extra=["--mode", "open", "--rate", str(rate), "--threads", str(threads)], base=TIME_ARGS)
    check_result(js, 4, 2)
    # each loop rounds its own count of frames down at the window's end
    assert abs(js["frames_sent"] - rate * duration_s) <= threads, js
    assert js["lat_samples"] == js["frames_sent"], js
    assert js["open_held"] == 0 and js["target_rate"] == rate, js


@pytest.mark.parametrize("threads,binaries,says", [
    (0, 1, f"--threads wants an integer in 1..{THREADS_MAX}"),
    (THREADS_MAX + 1, THREADS_MAX + 1, f"--threads wants an integer in 1..{THREADS_MAX}"),
    (3, 2, "--threads 3 is more than --binaries 2"),
], ids=["zero", "above-max", "more-than-binaries"])
def test_threads_out_of_range_refused(loadgen_bin, threads, binaries, says):
    """Refused before any connection (the URL's port is never dialled): usage exit
    status, a message naming the flag and the allowed range, and no JSON line, so a
    harness cannot mistake it for a result."""
    argv = [loadgen_bin, "--url", "ws://127.0.0.1:9", "--binaries", str(binaries), "--threads", str(threads),
            *TIME_ARGS]
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=USAGE_TIMEOUT_S)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == EXIT_USAGE, (p.returncode, err)
    assert says in err, err
    assert not p.stdout.strip(), p.stdout


def scrape(relay) -> dict:
    """{series: value} of the relay's /metrics."""
    out = {}
    for line in relay.metrics_text().splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1)] = float(m.group(2))
    return out


def test_handshakes_mode_over_tls(relay_factory, loadgen_bin):
    """--mode handshakes for 2 s against a relay terminating TLS (certificate files): 8
    slots on 2 generator threads each connect, complete a full TLS handshake and a
    /v1/server upgrade with a server-id of their own, send close 1000, wait for the echo
    and the relay's end of TCP, and start over. The counts must agree: every connection
    started got its 101 and the echo of its close, over TLS 1.3, none resumed; the window's
    handshakes are exactly its latency samples and its rate is their count over the window;
    and the relay's own counters saw exactly as many accepted server upgrades and TLS 1.3
    handshakes, with no binary left registered at the end."""
    cert, key = tls_material()
    relay = relay_factory.start(metrics=True, args=["--tls-cert", cert, "--tls-key", key,
                                                    "--rate-limit-burst", "0", "--grace-period", "0"])
    assert relay.tls
    before = scrape(relay)
    js = run_loadgen(loadgen_bin, relay.ws_url(""), HS_SLOTS, 0, extra=["--threads", str(HS_THREADS)],
                     base=HS_ARGS)
    assert js["mode"] == "handshakes" and js["transport"] == "wss" and js["ok"] is True, js
    n = js["handshakes_started"]
    assert n > 0 and js["handshakes_completed"] == js["handshakes_closed"] == js["handshakes_tls13"] == n, js
    assert js["handshakes_resumed"] == 0, js
    assert 0 < js["handshakes"] <= n and js["hs_lat_samples"] == js["handshakes"], js
    assert js["handshakes_per_s"] == pytest.approx(js["handshakes"] / js["duration_s"], rel=1e-3, abs=0.1), js
    assert 0 < js["hs_lat_p50_us"] <= js["hs_lat_p99_us"] <= js["hs_lat_max_us"], js
    # every slot completed at least one; no frames in this mode
    assert js["connections"] == js["connections_target"] == HS_SLOTS, js
    for k in ("errors", "frames_sent", "frames_p2b", "frames_b2p", "lat_samples"):
        assert js[k] == 0, (k, js)

    accepted = 'pyrycode_relay_ws_upgrade_attempts_total{endpoint="server",outcome="accept"}'
    tls13 = 'pyrycode_relay_tls_handshakes_total{version="1.3"}'
    resumed = "pyrycode_relay_tls_resumptions_total"
    after = {}

    def settled():
        nonlocal after
        after = scrape(relay)
        return (after[accepted] - before[accepted] == n and after[tls13] - before[tls13] == n
                and after["pyrycode_relay_connected_binaries"] == 0)

    try:
        wait_until(settled, METRICS_SETTLE_S, interval=0.05, what="the relay's counters")
    except TimeoutError:
        pass  # the asserts below say which count differs
    assert after[accepted] - before[accepted] == n, (after[accepted], before[accepted], js)
    assert after[tls13] - before[tls13] == n, (after[tls13], before[tls13], js)
    assert after[resumed] - before[resumed] == 0
    assert after["pyrycode_relay_connected_binaries"] == 0


@pytest.mark.parametrize("argv,says", [
    (["--count", "5"], "--count only applies to --mode handshakes"),
    (["--mode", "handshakes", "--phones", "2"], "--mode handshakes has no phones"),
    (["--mode", "handshakes", "--raw", "--url", "tcp://127.0.0.1:9"], "--mode handshakes needs a ws:// or wss://"),
], ids=["count-without-mode", "phones", "raw"])
def test_handshakes_mode_usage_refused(loadgen_bin, argv, says):
    """Refused before any connection: usage exit status, the reason, no JSON line."""
    p = subprocess.run([loadgen_bin, "--url", "ws://127.0.0.1:9", *argv], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=USAGE_TIMEOUT_S)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == EXIT_USAGE, (p.returncode, err)
    assert says in err, err
    assert not p.stdout.strip(), p.stdout
