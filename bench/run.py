#!/usr/bin/python3
"""bench/run.py: the relay's benchmark scenarios (issue #5, docs/benchmarks.md).

Runs a fixed list of scenarios, each against a freshly started server pinned to one
CPU while the load generator runs pinned to another:

  raw/...   tools/rawfwd, a trivial io_uring forwarder: the ceiling for the same traffic
  relay/... pyrycode-relay, plaintext WebSocket
  tls/...   pyrycode-relay behind HAProxy terminating TLS (deploy/haproxy/), HAProxy
            pinned to the relay's CPU; its CPU is reported separately and summed
  wss/...   pyrycode-relay terminating TLS itself (--https-listen with --tls-cert and
            --tls-key: BoringSSL in user space on its ring), read against relay/ and
            tls/ of the same shape measured in the same run (--only adds them)

For every scenario it samples the server's CPU time (utime+stime, /proc/PID/stat) and
RSS (VmRSS) ten times a second, takes the load generator's one JSON line, and derives
the figures that survive a noisy shared machine: relay CPU-seconds per million relayed
frames, and throughput as a fraction of rawfwd's for the same topology and frame size.
Open-loop rates are fractions of the capacity measured just before for the same
target, topology and size. Idle scenarios give memory per connection (user space: RSS
delta; kernel: /proc/net/sockstat and slab deltas, reported separately). Handshake
scenarios (loadgen --mode handshakes: connect, TLS, /v1/server upgrade, close, again)
give connections per second and per server CPU-second.

Writes <out>/<YYYY-MM-DD>.json (or -quick.json) and PNG charts next to it, prints a
summary table. Every child process runs in its own process group and is killed on
exit, on error and on Ctrl-C; every wait is bounded.

    /usr/bin/python3 bench/run.py                 # full list, ~10 min on 2 cores
    /usr/bin/python3 bench/run.py --quick         # smoke run, < 60 s
    /usr/bin/python3 bench/run.py --only 'relay/100x4'   # regex over scenario names

Python 3 standard library, plus matplotlib for the charts (skipped with a warning if
it is missing). Builds nothing: `make bench` builds first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "pyrycode-relay-tls.cfg"
RUN_UNPRIVILEGED = REPO / "tools" / "run-unprivileged.sh"

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
NOFILE = 262144            # fd limit for every child: 10k connections need ~20k per side
SAMPLE_S = 0.1             # /proc sampling period
# a server whose log grows past this is killed: the handshakes scenario logs the
# reference's three lines per connection (claimed, read end, released), ~125 B each,
# at ~20k connections/s for ~11 s, about 80 MB
SERVER_LOG_BYTES_MAX = 256 << 20
STDERR_LINES_KEPT = 200
STDOUT_BYTES_MAX = 1 << 20
PORT_BASE = 21000          # below the ephemeral range the load generator connects from

# ---------------------------------------------------------------------------------
# scenarios


# The relay terminating TLS itself (wss/): the certificate is made at bench time, P-256.
# Goals of issue #12 it is read against (reported, never a failure):
WSS_HANDSHAKES_PER_CPU_S_GOAL = 3000.0  # TLS 1.3 handshakes + upgrade per relay CPU-second
WSS_VS_HAPROXY_CPU_GOAL = 0.5           # relay (wss) CPU per frame / (relay + HAProxy)
WSS_TLS_STATE_BYTES_GOAL = 4096.0       # user space per idle connection, wss minus ws
HANDSHAKE_SLOTS = 64                    # connections set up at a time (a reconnect burst)


@dataclass
class Scenario:
    target: str            # raw | relay | tls | wss
    binaries: int          # handshakes: connections at a time
    phones: int            # per binary
    size: int              # frame payload bytes
    mode: str              # closed | open | idle | handshakes
    load: Optional[float]  # open loop: fraction of the measured capacity
    duration_s: float
    warmup_s: float
    window: int = 1        # closed loop: frames in flight per phone
    src_ips: int = 1

    @property
    def connections(self) -> int:
        return self.binaries * (1 + self.phones)

    @property
    def topo(self) -> str:
        return f"{self.binaries}x{self.phones}"

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return "capacity"
        if self.mode == "open":
            return f"open{round(self.load * 100)}"
        return self.mode

    @property
    def name(self) -> str:
        if self.mode in ("idle", "handshakes"):
            return f"{self.target}/{self.mode}/{self.connections}"
        return f"{self.target}/{self.topo}/{size_label(self.size)}/{self.label}"

    @property
    def capacity_name(self) -> str:
        return f"{self.target}/{self.topo}/{size_label(self.size)}/capacity"



def per_ip_off(relay_bin: str) -> list:
    """--max-connections-per-ip 0 where the binary has the flag (builds from before it
    existed, compared with --relay or bench/issue17.py, refuse unknown flags)."""
    try:
        out = subprocess.run([relay_bin, "--help"], capture_output=True, text=True, timeout=10)
    except OSError:
        return []
    return ["--max-connections-per-ip", "0"] if "--max-connections-per-ip" in out.stdout + out.stderr else []

def size_label(n: int) -> str:
    return f"{n // 1024}KiB" if n >= 1024 and n % 1024 == 0 else f"{n}B"


# Closed-loop window per phone: enough frames in flight to saturate one server core
# (a 1x1 ping-pong with one frame in flight measures latency, not capacity).
def window_for(binaries: int, phones: int) -> int:
    return max(1, math.ceil(32 / (binaries * phones)))


def scenario_list(quick: bool) -> list[Scenario]:
    out: list[Scenario] = []
    if quick:
        d, w = 2.0, 0.5
        out.append(Scenario("raw", 100, 4, 64, "closed", None, d, w, window_for(100, 4)))
        out.append(Scenario("relay", 100, 4, 64, "closed", None, d, w, window_for(100, 4)))
        out.append(Scenario("relay", 100, 4, 64, "open", 0.5, d, w))
        out.append(Scenario("relay", 1, 1, 1024, "closed", None, d, w, window_for(1, 1)))
        out.append(Scenario("relay", 500, 1, 0, "idle", None, 2.0, 0.0, src_ips=2))
        out.append(Scenario("tls", 100, 4, 64, "closed", None, d, w, window_for(100, 4)))
        return out
    d, w = 8.0, 2.0
    for b, p in ((1, 1), (100, 4), (1000, 1)):
        src = 1 if b * (1 + p) < 1000 else 2
        for size in (64, 1024, 16384):
            win = window_for(b, p)
            out.append(Scenario("raw", b, p, size, "closed", None, d, w, win, src))
            out.append(Scenario("relay", b, p, size, "closed", None, d, w, win, src))
            out.append(Scenario("relay", b, p, size, "open", 0.5, d, w, 1, src))
            out.append(Scenario("relay", b, p, size, "open", 0.9, d, w, 1, src))
            if size == 64:
                # the machine's own latency floor at the same load: what the relay's
                # open-loop tail is compared with (the kernel, the VM, the generator)
                out.append(Scenario("raw", b, p, size, "open", 0.5, d, w, 1, src))
    out.append(Scenario("relay", 5000, 1, 0, "idle", None, 5.0, 0.0, src_ips=4))
    # TLS via HAProxy termination: the headline topology at every size, the
    # latency-bound 1x1, open loop at 64 B, and the idle cost per connection.
    for size in (64, 1024, 16384):
        out.append(Scenario("tls", 100, 4, size, "closed", None, d, w, window_for(100, 4)))
    out.append(Scenario("tls", 100, 4, 64, "open", 0.5, d, w))
    out.append(Scenario("tls", 100, 4, 64, "open", 0.9, d, w))
    out.append(Scenario("tls", 1, 1, 64, "closed", None, d, w, window_for(1, 1)))
    out.append(Scenario("tls", 1, 1, 64, "open", 0.5, d, w))
    out.append(Scenario("tls", 2000, 1, 0, "idle", None, 5.0, 0.0, src_ips=4))
    # The relay terminating TLS itself: CPU per frame at the sizes the HAProxy figures
    # exist for, memory per idle connection at the plaintext idle point's shape, and
    # handshakes per second with the upgrade, against the same churn over ws://.
    for size in (64, 1024):
        out.append(Scenario("wss", 100, 4, size, "closed", None, d, w, window_for(100, 4)))
    out.append(Scenario("wss", 5000, 1, 0, "idle", None, 5.0, 0.0, src_ips=4))
    for target in ("relay", "wss"):
        out.append(Scenario(target, HANDSHAKE_SLOTS, 0, 0, "handshakes", None, d, w, src_ips=4))
    return out


def comparisons(s: Scenario) -> list[str]:
    """The scenarios a wss/ figure is read against, measured in the same run: the same
    shape over ws:// and through HAProxy (capacity), the plaintext idle point, the same
    churn over ws://."""
    if s.target != "wss":
        return []
    if s.mode == "closed":
        rest = s.name.split("/", 1)[1]
        return [f"relay/{rest}", f"tls/{rest}"]
    if s.mode == "idle":
        return [f"relay/idle/{s.connections}"]
    if s.mode == "handshakes":
        return [f"relay/handshakes/{s.connections}"]
    return []


def select(all_sc: list[Scenario], regex: Optional[str]) -> list[Scenario]:
    """Scenarios whose name matches, plus the capacity runs their open-loop rates and
    %-of-raw figures come from, in the list's order."""
    if not regex:
        return all_sc
    rx = re.compile(regex)
    want = {s.name for s in all_sc if rx.search(s.name)}
    for s in all_sc:
        if s.name in want and s.mode == "open":
            want.add(s.capacity_name)
        if s.name in want:
            want.update(comparisons(s))
    return [s for s in all_sc if s.name in want]


# ---------------------------------------------------------------------------------
# processes: every child in its own group, all killed on exit

_children: list["Child"] = []
_children_lock = threading.Lock()


def nofile_limit() -> int:
    """The fd limit children get: NOFILE, or the hard limit when we may not raise it
    (no CAP_SYS_RESOURCE, e.g. in a container)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= NOFILE:
        return NOFILE
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        return NOFILE
    except (ValueError, OSError):
        return hard


def _child_setup(cpu: Optional[int]) -> None:
    os.setsid()
    n = nofile_limit()
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


class Child:
    """A child process pinned to `cpu` (affinity set before exec, so every exec in its
    chain, e.g. run-unprivileged.sh -> setpriv -> relay, keeps the pid and the pin)."""

    def __init__(self, name: str, argv: list[str], cpu: Optional[int], *, stdout=None,
                 stderr=None, env=None):
        self.name, self.argv, self.cpu = name, argv, cpu
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=stderr, env=env,
                                     preexec_fn=lambda: _child_setup(cpu))
        with _children_lock:
            _children.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def command(self) -> str:
        pin = f"taskset -c {self.cpu} " if self.cpu is not None else ""
        return pin + " ".join(_shq(a) for a in self.argv)

    def stop(self, grace_s: float = 3.0) -> Optional[int]:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        with _children_lock:
            if self in _children:
                _children.remove(self)
        return self.proc.poll()


def kill_all_children() -> None:
    with _children_lock:
        kids = list(_children)
    for c in kids:
        try:
            c.stop(grace_s=1.0)
        except Exception:  # cleanup must reach every child
            pass


def _shq(s: str) -> str:
    return s if re.fullmatch(r"[A-Za-z0-9_./:=,@%+-]+", s) else "'" + s.replace("'", "'\\''") + "'"


def proc_cpu_s(pid: int) -> Optional[float]:
    """utime+stime of the whole process (every thread, io_uring workers included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK   # fields 14 and 15
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_bytes(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def proc_nfds(pid: int) -> Optional[int]:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def kernel_mem() -> dict:
    """Kernel memory that sockets use, machine-wide: TCP buffer pages (sockstat) and
    slab (socket, inode, dentry, file objects). Both ends of a loopback connection
    count here, and so does anything else running on the machine."""
    out = {}
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    kv = line.split()[1:]
                    d = dict(zip(kv[0::2], (int(x) for x in kv[1::2])))
                    out["tcp_inuse"] = d.get("inuse")
                    out["tcp_alloc"] = d.get("alloc")
                    out["tcp_mem_bytes"] = d.get("mem", 0) * PAGE_BYTES
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mi = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.split()[1:2]}
        out["slab_bytes"] = mi.get("Slab")
        out["slab_unreclaimable_bytes"] = mi.get("SUnreclaim")
    except (OSError, ValueError):
        pass
    return out


def listening(port: int) -> bool:
    """A LISTEN socket on 127.0.0.1:port or 0.0.0.0:port, read from /proc/net/tcp so
    nothing connects to the server (rawfwd pairs its connections in arrival order)."""
    want = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                p = line.split()
                if len(p) > 3 and p[3] == "0A" and p[1] in want:
                    return True
    except OSError:
        pass
    return False


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class PortAllocator:
    def __init__(self, base: int):
        self.next = base

    def take(self) -> int:
        for _ in range(2000):
            p = self.next
            self.next = PORT_BASE + (self.next - PORT_BASE + 1) % 8000
            if port_free(p):
                return p
        raise RuntimeError("no free TCP port on 127.0.0.1 in the bench range")


class Drain(threading.Thread):
    """Reads a child's pipe so it never blocks: keeps stdout (bounded) or the last
    stderr lines, and the latest line for the progress display."""

    def __init__(self, pipe, keep_lines: bool):
        super().__init__(daemon=True)
        self.pipe, self.keep_lines = pipe, keep_lines
        self.data = bytearray()
        self.lines: deque = deque(maxlen=STDERR_LINES_KEPT)
        self.last = ""
        self.start()

    def run(self) -> None:
        for raw in iter(self.pipe.readline, b""):
            if self.keep_lines:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if line:
                    self.last = line
            elif len(self.data) < STDOUT_BYTES_MAX:
                self.data += raw[:STDOUT_BYTES_MAX - len(self.data)]
        self.pipe.close()


# ---------------------------------------------------------------------------------
# one scenario


@dataclass
class Sample:
    t: float
    cpu: Optional[float]
    rss: Optional[int]
    cpu_hap: Optional[float] = None
    rss_hap: Optional[int] = None
    cpu_lg: Optional[float] = None


@dataclass
class Env:
    relay: Path
    loadgen: Path
    rawfwd: Path
    tmp: Path
    cert_pem: Optional[Path]   # HAProxy's: chain then key; the relay's (wss) sit beside it
    cpu_server: Optional[int]
    cpu_gen: Optional[int]
    ports: PortAllocator
    tty: bool
    nofile: int
    results_by_name: dict = field(default_factory=dict)


def _interp(samples: list, t: float, attr: str) -> Optional[float]:
    pts = [(s.t, getattr(s, attr)) for s in samples if getattr(s, attr) is not None]
    if not pts:
        return None
    if t <= pts[0][0]:
        return pts[0][1]
    for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
        if t <= t1:
            return v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return pts[-1][1]


def open_rate_basis(cap_json: dict) -> Optional[float]:
    """--rate counts frames the phones send per second (all phones together), so the
    open-loop basis is the capacity run's phone->binary rate."""
    v = cap_json.get("frames_p2b_per_s")
    return float(v) if v else None


def start_server(sc: Scenario, env: Env, port: int, logf) -> tuple[Child, Optional[Child], int, dict]:
    """Start what the load generator talks to; returns (server, haproxy, url port, commands)."""
    cmds = {}
    if sc.target == "raw":
        srv = Child("rawfwd", [str(RUN_UNPRIVILEGED), str(env.rawfwd), "--listen", f"127.0.0.1:{port}"],
                    env.cpu_server, stdout=logf, stderr=logf)
        cmds["server"] = srv.command()
        return srv, None, port, cmds
    max_conns = max(1000, min(30000, env.nofile - 1000))
    if sc.target == "wss":
        listen = ["--https-listen", f"127.0.0.1:{port}", "--tls-cert", str(env.cert_pem.parent / "cert.pem"),
                  "--tls-key", str(env.cert_pem.parent / "key.pem")]
    else:
        listen = ["--insecure-listen", f"127.0.0.1:{port}"]
    relay_args = [str(RUN_UNPRIVILEGED), str(env.relay), *listen,
                  "--metrics-listen=", "--workers", "1", "--max-connections", str(max_conns),
                  *per_ip_off(str(env.relay)),  # every connection comes from 127.0.0.x
                  "--rate-limit-burst", "0", "--grace-period", "0"]
    srv = Child("relay", relay_args, env.cpu_server, stdout=logf, stderr=logf)
    cmds["server"] = srv.command()
    if sc.target != "tls":
        return srv, None, port, cmds
    tls_port = env.ports.take()
    hap_maxconn = max(1000, (env.nofile - 200) // 2)   # HAProxy wants 2 fds per connection
    henv = dict(os.environ, PYRY_TLS_BIND=f"127.0.0.1:{tls_port}", PYRY_TLS_CERT=str(env.cert_pem),
                PYRY_RELAY_ADDR=f"127.0.0.1:{port}", PYRY_HAPROXY_MAXCONN=str(hap_maxconn))
    hap = Child("haproxy", [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(HAPROXY_CFG)],
                env.cpu_server, stdout=logf, stderr=logf, env=henv)
    cmds["haproxy"] = (f"PYRY_TLS_BIND=127.0.0.1:{tls_port} PYRY_TLS_CERT={env.cert_pem} "
                       f"PYRY_RELAY_ADDR=127.0.0.1:{port} PYRY_HAPROXY_MAXCONN={hap_maxconn} "
                       + hap.command())
    return srv, hap, tls_port, cmds


def loadgen_argv(sc: Scenario, env: Env, url_port: int, rate: Optional[float], prefix: str) -> list[str]:
    if sc.target == "raw":
        a = [str(env.loadgen), "--raw", "--url", f"tcp://127.0.0.1:{url_port}"]
    elif sc.target in ("tls", "wss"):
        a = [str(env.loadgen), "--url", f"wss://127.0.0.1:{url_port}", "--insecure"]
    else:
        a = [str(env.loadgen), "--url", f"ws://127.0.0.1:{url_port}"]
    if sc.mode == "handshakes":
        return a + ["--mode", "handshakes", "--binaries", str(sc.binaries), "--duration", f"{sc.duration_s:g}",
                    "--warmup", f"{sc.warmup_s:g}", "--src-ips", str(sc.src_ips), "--connect-timeout", "30",
                    "--drain", "1", "--server-prefix", prefix]
    a += ["--binaries", str(sc.binaries), "--phones", str(sc.phones), "--mode", sc.mode,
          "--duration", f"{sc.duration_s:g}", "--warmup", f"{sc.warmup_s:g}",
          "--src-ips", str(sc.src_ips), "--connect-timeout", "30", "--drain", "1",
          "--server-prefix", prefix]
    if sc.mode != "idle":
        a += ["--size", str(sc.size)]
    if sc.mode == "closed":
        a += ["--window", str(sc.window)]
    if sc.mode == "open":
        a += ["--rate", f"{rate:.0f}"]
    return a


def run_scenario(sc: Scenario, idx: int, total: int, env: Env, progress) -> dict:
    res: dict = {"name": sc.name, "target": sc.target,
                 "topology": sc.topo if sc.mode not in ("idle", "handshakes") else sc.mode,
                 "binaries": sc.binaries, "phones_per_binary": sc.phones, "connections": sc.connections,
                 "size_bytes": sc.size, "mode": sc.mode, "load_fraction": sc.load,
                 "duration_s": sc.duration_s, "warmup_s": sc.warmup_s, "window": sc.window,
                 "status": "ok", "commands": {}}
    rate = None
    if sc.mode == "open":
        cap = env.results_by_name.get(sc.capacity_name)
        basis = open_rate_basis(cap["loadgen"]) if cap and cap.get("loadgen") else None
        if not basis:
            res.update(status="skipped", error=f"no capacity measured for {sc.capacity_name}")
            return res
        rate = basis * sc.load
        res["capacity_basis_frames_per_s"] = basis
        res["target_rate"] = rate

    port = env.ports.take()
    logpath = env.tmp / f"server-{idx}.log"
    logf = open(logpath, "wb")
    srv = hap = lg = None
    try:
        srv, hap, url_port, cmds = start_server(sc, env, port, logf)
        res["commands"].update(cmds)
        deadline = time.monotonic() + 10
        while not (listening(port) and (hap is None or listening(url_port))):
            if not srv.alive() or (hap and not hap.alive()):
                raise RuntimeError("server exited at start: " + tail(logpath))
            if time.monotonic() > deadline:
                raise RuntimeError("server not listening after 10 s: " + tail(logpath))
            time.sleep(0.05)
        time.sleep(0.3)

        base_fds = proc_nfds(srv.pid) or 0
        rss0, cpu0 = proc_rss_bytes(srv.pid), proc_cpu_s(srv.pid)
        rss0_hap = proc_rss_bytes(hap.pid) if hap else None
        cpu0_hap = proc_cpu_s(hap.pid) if hap else None
        kmem0 = kernel_mem() if sc.mode == "idle" else None

        prefix = f"b{os.getpid()}x{idx}"
        argv = loadgen_argv(sc, env, url_port, rate, prefix)
        lg = Child("loadgen", argv, env.cpu_gen, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        res["commands"]["loadgen"] = lg.command()
        out, err = Drain(lg.proc.stdout, False), Drain(lg.proc.stderr, True)

        t_start = time.monotonic()
        limit_s = sc.duration_s + sc.warmup_s + 60 + sc.connections / (100 if sc.target == "tls" else 500)
        samples: list[Sample] = []
        # handshakes: nothing stays connected; traffic (the churn) starts with the
        # generator, so its window is counted from the generator's start
        t_conn = t_start if sc.mode == "handshakes" else None
        mem_sample = None
        ramp: list[tuple[int, int]] = []   # (connections the server holds, its RSS)
        # the server holds one fd per connection it serves (rawfwd and the relay
        # alike); HAProxy's health check may add one
        want_fds = base_fds + sc.connections
        last_draw = 0.0
        while True:
            now = time.monotonic()
            s = Sample(now, proc_cpu_s(srv.pid), proc_rss_bytes(srv.pid),
                       proc_cpu_s(hap.pid) if hap else None, proc_rss_bytes(hap.pid) if hap else None,
                       proc_cpu_s(lg.pid))
            samples.append(s)
            if t_conn is None:
                n = proc_nfds(srv.pid)
                if n is not None and s.rss is not None:
                    ramp.append((n - base_fds, s.rss))
                if n is not None and n >= want_fds:
                    t_conn = now
            if sc.mode == "idle" and t_conn is not None and mem_sample is None and now - t_conn >= 1.5:
                mem_sample = (proc_rss_bytes(srv.pid), kernel_mem(),
                              proc_rss_bytes(hap.pid) if hap else None, now)
            if not lg.alive():
                break
            if not srv.alive() or (hap and not hap.alive()):
                raise RuntimeError("server died mid-run: " + tail(logpath))
            if logpath.stat().st_size > SERVER_LOG_BYTES_MAX:
                raise RuntimeError(f"server log passed {SERVER_LOG_BYTES_MAX} bytes")
            if now - t_start > limit_s:
                raise RuntimeError(f"load generator still running after {limit_s:.0f} s: killed")
            if now - last_draw >= 0.5:
                last_draw = now
                progress(idx, total, sc, now - t_start, phase(sc, t_conn, now), live_figure(samples, err.last))
            time.sleep(SAMPLE_S)
        t_exit = time.monotonic()
        lg.proc.wait(timeout=5)
        out.join(timeout=5)
        err.join(timeout=5)
        rc = lg.proc.returncode
        res["loadgen_exit"] = rc
        res["loadgen_stderr_tail"] = list(err.lines)[-8:]
        js = parse_json_line(out.data)
        if js is None:
            raise RuntimeError(f"load generator exited {rc} without a JSON line: " + " | ".join(list(err.lines)[-5:]))
        res["loadgen"] = js
        if rc != 0:
            res["status"] = "errors"
            res["error"] = f"loadgen exit {rc} (errors={js.get('errors')} lost={js.get('lost')} corrupted={js.get('corrupted')})"

        cpu1 = proc_cpu_s(srv.pid)
        res["server"] = {
            "pid_cpu": env.cpu_server, "cpu_s_total": _diff(cpu1, cpu0),
            "rss_bytes_before": rss0, "rss_bytes_after": proc_rss_bytes(srv.pid),
            "rss_bytes_max": max((x.rss for x in samples if x.rss), default=None),
            "fds_before": base_fds, "connected_after_s": (t_conn - t_start) if t_conn else None,
            "wall_s": t_exit - t_start, "samples": len(samples)}
        if hap:
            res["haproxy"] = {"cpu_s_total": _diff(proc_cpu_s(hap.pid), cpu0_hap),
                              "rss_bytes_before": rss0_hap, "rss_bytes_after": proc_rss_bytes(hap.pid),
                              "rss_bytes_max": max((x.rss_hap for x in samples if x.rss_hap), default=None)}
        derive(res, sc, samples, t_start, t_conn, t_exit, js)
        if sc.mode == "idle":
            derive_memory(res, sc, rss0, kmem0, rss0_hap, mem_sample, ramp)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        res["status"] = "failed"
        res["error"] = str(e)[:2000]
    finally:
        for c in (lg, hap, srv):
            if c is not None:
                c.stop()
        logf.close()
        res["server_log_bytes"] = logpath.stat().st_size if logpath.exists() else 0
        if res["status"] != "ok":
            res["server_log_tail"] = tail(logpath, 1500)
        try:
            logpath.unlink()
        except OSError:
            pass
    return res


def _diff(a, b):
    return (a - b) if a is not None and b is not None else None


def tail(path: Path, n: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def parse_json_line(data: bytes) -> Optional[dict]:
    for line in reversed(data.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def phase(sc: Scenario, t_conn: Optional[float], now: float) -> str:
    if t_conn is None:
        return "connecting"
    if sc.mode == "idle":
        return "holding"
    el = now - t_conn
    if el < sc.warmup_s:
        return "warmup"
    if el < sc.warmup_s + sc.duration_s:
        return "measuring"
    return "finishing"


def live_figure(samples: list, lg_line: str) -> str:
    cpu = ""
    if len(samples) >= 11 and samples[-1].cpu is not None and samples[-11].cpu is not None:
        dt_s = samples[-1].t - samples[-11].t
        c = (samples[-1].cpu - samples[-11].cpu)
        if samples[-1].cpu_hap is not None and samples[-11].cpu_hap is not None:
            c += samples[-1].cpu_hap - samples[-11].cpu_hap
        cpu = f"server cpu {100 * c / dt_s:3.0f}% "
    return cpu + "| " + lg_line


def derive(res: dict, sc: Scenario, samples: list, t_start: float, t_conn: Optional[float],
           t_exit: float, js: dict) -> None:
    """The measurement window is [connected + warmup, + duration]; its CPU comes from
    the 10 Hz samples. Without a connected time (fd count never reached) the window
    is the last `duration` seconds before the load generator exited."""
    d = float(js.get("duration_s") or sc.duration_s)
    if sc.mode == "handshakes":
        w0, src = t_conn + sc.warmup_s, "start+warmup"
    elif t_conn is not None:
        w0, src = t_conn + sc.warmup_s, "connected+warmup"
    else:
        w0, src = max(t_start, t_exit - d - 0.3), "exit-duration"
    w1 = min(w0 + d, t_exit)
    if w1 - w0 > 1.0:           # stay off the edges where ramps and teardown live
        w0, w1 = w0 + 0.2, w1 - 0.2
    der: dict = {"window_s": w1 - w0, "window_source": src}
    c0, c1 = _interp(samples, w0, "cpu"), _interp(samples, w1, "cpu")
    cpu_rate = (c1 - c0) / (w1 - w0) if c0 is not None and c1 is not None and w1 > w0 else None
    der["server_cpu_util"] = cpu_rate
    hap_rate = None
    if samples and samples[0].cpu_hap is not None:
        h0, h1 = _interp(samples, w0, "cpu_hap"), _interp(samples, w1, "cpu_hap")
        hap_rate = (h1 - h0) / (w1 - w0) if h0 is not None and h1 is not None and w1 > w0 else None
        der["haproxy_cpu_util"] = hap_rate
    l0, l1 = _interp(samples, w0, "cpu_lg"), _interp(samples, w1, "cpu_lg")
    # the generator's own CPU: near 100% means it, not the server, set the pace
    der["loadgen_cpu_util"] = (l1 - l0) / (w1 - w0) if l0 is not None and l1 is not None and w1 > w0 else None
    fps = float(js.get("frames_p2b_per_s") or 0) + float(js.get("frames_b2p_per_s") or 0)
    der["frames_per_s"] = fps
    der["mbytes_per_s"] = js.get("mbytes_per_s")
    hs = float(js.get("handshakes_per_s") or 0)
    if sc.mode == "handshakes":
        der["handshakes_per_s"] = hs
        if hs > 0 and cpu_rate:
            # "per core": what one fully busy relay CPU would set up at this cost
            der["handshakes_per_server_cpu_s"] = hs / cpu_rate
            der["server_cpu_us_per_handshake"] = cpu_rate / hs * 1e6
    if sc.mode != "idle" and fps > 0 and cpu_rate is not None:
        der["server_cpu_s_per_mframe"] = cpu_rate / fps * 1e6
        if hap_rate is not None:
            der["haproxy_cpu_s_per_mframe"] = hap_rate / fps * 1e6
            der["combined_cpu_s_per_mframe"] = (cpu_rate + hap_rate) / fps * 1e6
    res["derived"] = der


def marginal_slope(ramp: list, n_max: int) -> Optional[float]:
    """Least-squares bytes per connection over the connect ramp (20%..100% of the
    connections), which leaves out the one-off cost of the first connections (buffer
    ring pages, pool heads) that the plain RSS delta / connections includes."""
    pts = [(n, r) for n, r in ramp if 0.2 * n_max <= n <= n_max]
    if len(pts) < 3 or max(n for n, _ in pts) - min(n for n, _ in pts) < 0.3 * n_max:
        return None
    mx = sum(n for n, _ in pts) / len(pts)
    my = sum(r for _, r in pts) / len(pts)
    sxx = sum((n - mx) ** 2 for n, _ in pts)
    return sum((n - mx) * (r - my) for n, r in pts) / sxx if sxx else None


def derive_memory(res: dict, sc: Scenario, rss0, kmem0, rss0_hap, mem_sample, ramp) -> None:
    if mem_sample is None:
        res["memory"] = {"error": "connections were not all established long enough to sample"}
        return
    rss1, kmem1, rss1_hap, _ = mem_sample
    n = sc.connections
    sockets = 2 * n if sc.target != "tls" else 4 * n   # loopback: both ends; TLS: two hops
    m = {"connections": n, "sockets_on_machine": sockets,
         "server_rss_bytes_before": rss0, "server_rss_bytes_connected": rss1,
         "user_bytes_per_connection": (rss1 - rss0) / n if rss0 and rss1 else None,
         "user_bytes_per_connection_marginal": marginal_slope(ramp, n),
         "ramp_points": len(ramp)}
    if rss0_hap and rss1_hap:
        m["haproxy_rss_bytes_before"] = rss0_hap
        m["haproxy_rss_bytes_connected"] = rss1_hap
        m["haproxy_user_bytes_per_connection"] = (rss1_hap - rss0_hap) / n
    for k in ("tcp_mem_bytes", "slab_bytes", "slab_unreclaimable_bytes"):
        if kmem0 and kmem0.get(k) is not None and kmem1.get(k) is not None:
            delta = kmem1[k] - kmem0[k]
            m[f"kernel_{k}_delta"] = delta
            m[f"kernel_{k}_per_socket"] = delta / sockets
    m["tcp_inuse_delta"] = (kmem1.get("tcp_inuse") or 0) - (kmem0.get("tcp_inuse") or 0) if kmem0 else None
    res["memory"] = m


# ---------------------------------------------------------------------------------
# whole run: machine facts, relations between scenarios, output


def machine_info(env: Env) -> dict:
    def cmd(*a) -> Optional[str]:
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=10, cwd=REPO).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = None
    dirty = cmd("git", "status", "--porcelain", "--untracked-files=no")
    hap = cmd(shutil.which("haproxy") or "haproxy", "-v")
    return {
        "hostname": platform.node(), "kernel": platform.release(), "cpu_model": model,
        "nproc": os.cpu_count(), "mem_total_bytes": mem_kb * 1024 if mem_kb else None,
        "debian": Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else None,
        "git_commit": cmd("git", "rev-parse", "HEAD"), "git_dirty": bool(dirty),
        "relay_version": cmd(str(env.relay), "--version"),
        "relay_path": str(env.relay), "loadgen_path": str(env.loadgen), "rawfwd_path": str(env.rawfwd),
        "binaries_sha256": {p.name: _sha256(p) for p in (env.relay, env.loadgen, env.rawfwd) if p.exists()},
        "haproxy_version": hap.splitlines()[0] if hap else None,
        "openssl_version": cmd("openssl", "version"),
        "python": sys.version.split()[0],
        "cpu_server": env.cpu_server, "cpu_loadgen": env.cpu_gen, "fd_limit": env.nofile,
        "loadavg_start": os.getloadavg(),
    }


def _sha256(p: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def relate(results: list[dict]) -> None:
    """%-of-raw and CPU ratio: the relay (or TLS) capacity against rawfwd's capacity for
    the same topology and size."""
    by = {r["name"]: r for r in results}
    for r in results:
        der = r.get("derived")
        if not der or r["mode"] != "closed" or r["target"] == "raw" or r["status"] == "failed":
            continue
        raw = by.get(f"raw/{r['topology']}/{size_label(r['size_bytes'])}/capacity")
        rd = raw.get("derived") if raw and raw["status"] != "failed" else None
        if rd and rd.get("frames_per_s"):
            der["pct_of_raw_ceiling"] = 100.0 * der["frames_per_s"] / rd["frames_per_s"]
            cpu = cpu_per_mframe(der)
            if cpu and rd.get("server_cpu_s_per_mframe"):
                der["cpu_per_frame_vs_raw"] = cpu / rd["server_cpu_s_per_mframe"]
    relate_wss(results)


def relate_wss(results: list[dict]) -> None:
    """The relay terminating TLS against the same shape over ws:// and through HAProxy,
    from the same run: CPU per frame (wss/ws and wss/(relay + HAProxy), and what TLS
    adds in each: wss - ws against tls - ws), user-space bytes per idle connection
    (wss - ws: the TLS state), CPU per handshake (wss/ws)."""
    by = {r["name"]: r for r in results}

    def der(name):
        r = by.get(name)
        return r.get("derived") if r and r["status"] != "failed" and r.get("derived") else None

    for r in results:
        if r["target"] != "wss" or r["status"] == "failed" or not r.get("derived"):
            continue
        d, rest = r["derived"], r["name"].split("/", 1)[1]
        cmp: dict = {}
        if r["mode"] == "closed":
            ws, hap, own = der(f"relay/{rest}"), der(f"tls/{rest}"), d.get("server_cpu_s_per_mframe")
            ws_cpu = ws and ws.get("server_cpu_s_per_mframe")
            hap_cpu = hap and hap.get("combined_cpu_s_per_mframe")
            if own and ws_cpu:
                cmp["ws_cpu_s_per_mframe"] = ws_cpu
                cmp["wss_vs_ws"] = own / ws_cpu
            if own and hap_cpu:
                cmp["haproxy_combined_cpu_s_per_mframe"] = hap_cpu
                cmp["wss_vs_haproxy_combined"] = own / hap_cpu
                if ws_cpu and hap_cpu > ws_cpu:
                    # what TLS adds on top of plaintext relaying, in the relay vs in front of it
                    cmp["tls_added_in_relay_cpu_s_per_mframe"] = own - ws_cpu
                    cmp["tls_added_by_haproxy_cpu_s_per_mframe"] = hap_cpu - ws_cpu
                    cmp["tls_added_ratio"] = (own - ws_cpu) / (hap_cpu - ws_cpu)
        elif r["mode"] == "idle":
            ws_r = by.get(f"relay/idle/{r['connections']}")
            m, wm = r.get("memory") or {}, (ws_r or {}).get("memory") or {}
            if m.get("user_bytes_per_connection") is not None and wm.get("user_bytes_per_connection") is not None:
                cmp["ws_user_bytes_per_connection"] = wm["user_bytes_per_connection"]
                cmp["tls_state_bytes_per_connection"] = m["user_bytes_per_connection"] - wm["user_bytes_per_connection"]
            if (m.get("user_bytes_per_connection_marginal") is not None
                    and wm.get("user_bytes_per_connection_marginal") is not None):
                cmp["tls_state_bytes_per_connection_marginal"] = (m["user_bytes_per_connection_marginal"]
                                                                  - wm["user_bytes_per_connection_marginal"])
        elif r["mode"] == "handshakes":
            ws = der(f"relay/{rest}")
            own, ws_us = d.get("server_cpu_us_per_handshake"), ws and ws.get("server_cpu_us_per_handshake")
            if own and ws_us:
                cmp["ws_server_cpu_us_per_handshake"] = ws_us
                cmp["wss_vs_ws"] = own / ws_us
                cmp["tls_added_cpu_us_per_handshake"] = own - ws_us
        if cmp:
            r["vs"] = cmp


def targets(results: list[dict]) -> list[dict]:
    by = {r["name"]: r for r in results}
    out = []

    def d(name, key):
        r = by.get(name)
        return r.get("derived", {}).get(key) if r and r["status"] != "failed" else None

    v = d("relay/100x4/64B/capacity", "pct_of_raw_ceiling")
    out.append({"goal": ">= 70% of the raw ceiling frames/s, 64 B, 100x4, plaintext",
                "value": v, "unit": "%", "met": None if v is None else v >= 70})
    for prefix in ("relay", "tls"):
        for r in results:
            if r["target"] == prefix and r["mode"] == "open" and r.get("load_fraction") == 0.5 and r.get("loadgen"):
                p99 = r["loadgen"].get("lat_p99_us")
                g = {"goal": f"p99 round trip <= 1 ms at 50% of capacity, {r['name']}",
                     "value": p99, "unit": "us", "met": None if p99 is None else p99 <= 1000}
                # the same load through rawfwd: the floor this machine sets
                raw = by.get("raw/" + r["name"].split("/", 1)[1])
                if raw and raw["status"] == "ok" and raw.get("loadgen"):
                    g["raw_p99_us"] = raw["loadgen"].get("lat_p99_us")
                out.append(g)
    for r in results:
        if (r["mode"] == "idle" and r["target"] != "wss"
                and r.get("memory", {}).get("user_bytes_per_connection") is not None):
            v = r["memory"]["user_bytes_per_connection"]
            out.append({"goal": f"<= 512 B user-space memory per idle connection (relay), {r['name']}",
                        "value": v, "unit": "B", "met": v <= 512})
    return out + targets_wss(results)


def targets_wss(results: list[dict]) -> list[dict]:
    """Issue #12's goals for the relay terminating TLS; only for wss/ scenarios run."""
    out = []
    for r in results:
        if r["target"] != "wss" or r["status"] == "failed":
            continue
        d, vs = r.get("derived") or {}, r.get("vs") or {}
        if r["mode"] == "handshakes":
            v = d.get("handshakes_per_server_cpu_s")
            out.append({"goal": f">= {WSS_HANDSHAKES_PER_CPU_S_GOAL:.0f} TLS 1.3 handshakes + upgrades per relay "
                                f"CPU-second, P-256, {r['name']}",
                        "value": v, "unit": "/cpu-s",
                        "met": None if v is None else v >= WSS_HANDSHAKES_PER_CPU_S_GOAL})
        elif r["mode"] == "closed":
            v = vs.get("wss_vs_haproxy_combined")
            out.append({"goal": f"relay CPU per frame over wss <= {WSS_VS_HAPROXY_CPU_GOAL:g} x relay + HAProxy, "
                                f"{r['name']}",
                        "value": v, "unit": "x", "met": None if v is None else v <= WSS_VS_HAPROXY_CPU_GOAL})
        elif r["mode"] == "idle":
            v = vs.get("tls_state_bytes_per_connection")
            out.append({"goal": f"< {WSS_TLS_STATE_BYTES_GOAL:.0f} B of TLS state per idle connection "
                                f"(wss - ws user space), {r['name']}",
                        "value": v, "unit": "B", "met": None if v is None else v < WSS_TLS_STATE_BYTES_GOAL})
    return out


def headline(results: list[dict]) -> dict:
    by = {r["name"]: r for r in results}
    h = {}
    for name in ("relay/100x4/64B/capacity", "tls/100x4/64B/capacity", "raw/100x4/64B/capacity",
                 "wss/100x4/64B/capacity", f"wss/handshakes/{HANDSHAKE_SLOTS}"):
        r = by.get(name)
        if r and r.get("derived"):
            h[name] = {k: r["derived"].get(k) for k in
                       ("frames_per_s", "server_cpu_s_per_mframe", "combined_cpu_s_per_mframe",
                        "pct_of_raw_ceiling", "cpu_per_frame_vs_raw", "handshakes_per_s",
                        "handshakes_per_server_cpu_s") if r["derived"].get(k) is not None}
            h[name].update(r.get("vs") or {})
    return h


def fmt_num(v, unit="") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (v != v):
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f}M{unit}"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k{unit}"
    if a >= 100:
        return f"{v:.0f}{unit}"
    return f"{v:.3g}{unit}"


def cpu_per_mframe(der: dict) -> Optional[float]:
    """The headline per-frame cost: server CPU-s per million frames (TLS: relay +
    HAProxy together)."""
    return der.get("combined_cpu_s_per_mframe", der.get("server_cpu_s_per_mframe"))


def summary_table(results: list[dict]) -> str:
    hdr = ("scenario", "conns", "frames/s", "MB/s", "p50 us", "p99 us", "p99.9 us",
           "cpu %", "gen %", "cpu-s/Mfr", "% raw", "status")
    rows = [hdr]
    for r in results:
        js, der = r.get("loadgen") or {}, r.get("derived") or {}
        cpu_u = der.get("server_cpu_util")
        if der.get("haproxy_cpu_util") is not None and cpu_u is not None:
            cpu_u += der["haproxy_cpu_util"]
        cpm = cpu_per_mframe(der)
        st = r["status"]
        if r["mode"] == "idle" and r.get("memory", {}).get("user_bytes_per_connection") is not None:
            st += f" ({r['memory']['user_bytes_per_connection']:.0f} B/conn user)"
        lat = "lat"
        if r["mode"] == "handshakes":
            lat = "hs_lat"   # connect -> 101
            if der.get("handshakes_per_s"):
                st += f" ({der['handshakes_per_s']:.0f} handshakes/s"
                if der.get("handshakes_per_server_cpu_s"):
                    st += f", {der['handshakes_per_server_cpu_s']:.0f} per server cpu-s"
                st += ")"
        rows.append((r["name"], str(r["connections"]), fmt_num(der.get("frames_per_s")),
                     fmt_num(js.get("mbytes_per_s")), fmt_num(js.get(f"{lat}_p50_us")),
                     fmt_num(js.get(f"{lat}_p99_us")), fmt_num(js.get(f"{lat}_p999_us")),
                     fmt_num(100 * cpu_u if cpu_u is not None else None),
                     fmt_num(100 * der["loadgen_cpu_util"] if der.get("loadgen_cpu_util") is not None else None),
                     f"{cpm:.2f}" if cpm else "-",
                     f"{der['pct_of_raw_ceiling']:.0f}%" if der.get("pct_of_raw_ceiling") else "-", st))
    w = [max(len(r[i]) for r in rows) for i in range(len(hdr))]
    return "\n".join("  ".join(c.ljust(w[i]) if i in (0, 11) else c.rjust(w[i]) for i, c in enumerate(r))
                     for r in rows)


def fmt_k(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.0f}k" if v >= 10000 else f"{v:.0f}"


def markdown(doc: dict) -> str:
    """The tables of docs/benchmarks.md, from a results file (so the page shows the
    data, not a transcription): goals, every scenario, memory per idle connection."""
    res = doc["scenarios"]
    out = ["| goal | result | |", "|---|---|---|"]
    for t in doc["targets"]:
        met = {True: "met", False: "not met", None: "not measured"}[t["met"]]
        val = f"{t['value']:.{2 if t['unit'] == 'x' else 1}f} {t['unit']}" if t["value"] is not None else "-"
        if t.get("raw_p99_us"):
            val += f" (rawfwd at the same load: {t['raw_p99_us']:.1f} us)"
        out.append(f"| {t['goal']} | {val} | {met} |")
    out += ["", "| scenario | frames/s | p50 / p99 / p99.9 µs | server CPU | generator CPU | CPU-s / M frames | % of raw | status |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res:
        if r["mode"] in ("idle", "handshakes"):
            continue
        js, der = r.get("loadgen") or {}, r.get("derived") or {}
        cpu = der.get("server_cpu_util")
        cpu_s = f"{100 * cpu:.0f}%" if cpu is not None else "-"
        if der.get("haproxy_cpu_util") is not None:
            cpu_s += f" + HAProxy {100 * der['haproxy_cpu_util']:.0f}%"
        gen = f"{100 * der['loadgen_cpu_util']:.0f}%" if der.get("loadgen_cpu_util") is not None else "-"
        cpm = cpu_per_mframe(der)
        cpm_s = f"{cpm:.2f}" if cpm else "-"
        if der.get("combined_cpu_s_per_mframe"):
            cpm_s += f" ({der['server_cpu_s_per_mframe']:.2f} + {der['haproxy_cpu_s_per_mframe']:.2f})"
        lat = "/".join(fmt_k(js.get(k)) for k in ("lat_p50_us", "lat_p99_us", "lat_p999_us"))
        pct = f"{der['pct_of_raw_ceiling']:.0f}%" if der.get("pct_of_raw_ceiling") else ""
        st = r["status"]
        if st != "ok" and r.get("error"):
            st += ": " + str(r["error"])
        out.append(f"| `{r['name']}` | {fmt_k(der.get('frames_per_s'))} | {lat} | {cpu_s} | {gen} | {cpm_s} | {pct} | {st} |")
    idle = [r for r in res if r["mode"] == "idle" and r.get("memory", {}).get("user_bytes_per_connection") is not None]
    idle = [r for r in idle if r["target"] != "wss"]   # in the wss tables below
    if idle:
        out += ["", "| | " + " | ".join(f"{r['target']}, {r['connections']:,} connections" for r in idle) + " |",
                "|---|" + "---:|" * len(idle)]

        def row(label, f):
            out.append(f"| {label} | " + " | ".join(f(r["memory"]) for r in idle) + " |")
        mb = lambda v: f"{v / 1e6:.1f} MB"
        row("relay RSS before -> all connected", lambda m: f"{mb(m['server_rss_bytes_before'])} -> {mb(m['server_rss_bytes_connected'])}")
        row("relay user space per connection (delta / n)", lambda m: f"**{m['user_bytes_per_connection']:,.0f} B**")
        row("relay user space, marginal (ramp slope)", lambda m: f"{m['user_bytes_per_connection_marginal']:,.0f} B"
            if m.get("user_bytes_per_connection_marginal") is not None else "-")
        row("HAProxy user space per connection", lambda m: f"{m['haproxy_user_bytes_per_connection']:,.0f} B"
            if m.get("haproxy_user_bytes_per_connection") is not None else "-")
        row("kernel slab per socket (machine-wide delta / sockets)",
            lambda m: f"{m['kernel_slab_bytes_per_socket']:,.0f} B ({m['sockets_on_machine']:,} sockets)")
        row("kernel TCP buffer pages (`sockstat mem`)", lambda m: f"{m['kernel_tcp_mem_bytes_delta']:,} B")
    out += markdown_wss(res)
    return "\n".join(out)


def markdown_wss(res: list[dict]) -> list[str]:
    """The in-relay TLS tables (wss/ against ws and HAProxy of the same run); nothing
    when no wss/ scenario ran."""
    by = {r["name"]: r for r in res}
    wss = [r for r in res if r["target"] == "wss"]
    if not wss:
        return []
    out: list[str] = []

    def pct(v):
        return f"{100 * v:.0f}%" if v is not None else "-"

    def num(v, f="{:.2f}"):
        return f.format(v) if v is not None else "-"

    hs = [r for r in res if r["mode"] == "handshakes"]
    if hs:
        out += ["", "| scenario | handshakes/s | connect -> 101 p50 / p99 / p99.9 µs | relay CPU | generator CPU "
                "| relay CPU µs / handshake | handshakes / relay CPU-s | TLS 1.3 / resumed | status |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in hs:
            js, d = r.get("loadgen") or {}, r.get("derived") or {}
            lat = "/".join(fmt_k(js.get(k)) for k in ("hs_lat_p50_us", "hs_lat_p99_us", "hs_lat_p999_us"))
            st = r["status"] + (": " + str(r["error"]) if r["status"] != "ok" and r.get("error") else "")
            out.append(f"| `{r['name']}` | {num(d.get('handshakes_per_s'), '{:,.0f}')} | {lat} "
                       f"| {pct(d.get('server_cpu_util'))} | {pct(d.get('loadgen_cpu_util'))} "
                       f"| {num(d.get('server_cpu_us_per_handshake'), '{:.0f}')} "
                       f"| **{num(d.get('handshakes_per_server_cpu_s'), '{:,.0f}')}** "
                       f"| {js.get('handshakes_tls13', '-')} / {js.get('handshakes_resumed', '-')} | {st} |")
    caps = [r for r in wss if r["mode"] == "closed"]
    if caps:
        out += ["", "| shape | ws: relay CPU-s / M frames | wss: relay | via HAProxy: relay + HAProxy "
                "| wss / ws | wss / (relay + HAProxy) | TLS added: in the relay / by HAProxy | frames/s ws, wss, HAProxy |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in caps:
            rest = r["name"].split("/", 1)[1]
            vs, d = r.get("vs") or {}, r.get("derived") or {}
            ws_d = (by.get(f"relay/{rest}") or {}).get("derived") or {}
            hap_d = (by.get(f"tls/{rest}") or {}).get("derived") or {}
            hap_s = "-"
            if hap_d.get("combined_cpu_s_per_mframe"):
                hap_s = (f"{hap_d['combined_cpu_s_per_mframe']:.2f} ({hap_d['server_cpu_s_per_mframe']:.2f} + "
                         f"{hap_d['haproxy_cpu_s_per_mframe']:.2f})")
            added = "-"
            if vs.get("tls_added_in_relay_cpu_s_per_mframe") is not None:
                added = (f"{vs['tls_added_in_relay_cpu_s_per_mframe']:.2f} / "
                         f"{vs['tls_added_by_haproxy_cpu_s_per_mframe']:.2f} ({pct(vs['tls_added_ratio'])})")
            fps = ", ".join(fmt_k(x.get("frames_per_s")) for x in (ws_d, d, hap_d))
            out.append(f"| `{rest}` | {num(ws_d.get('server_cpu_s_per_mframe'))} "
                       f"| {num(d.get('server_cpu_s_per_mframe'))} | {hap_s} | {num(vs.get('wss_vs_ws'))}x "
                       f"| **{pct(vs.get('wss_vs_haproxy_combined'))}** | {added} | {fps} |")
    idle = [r for r in wss if r["mode"] == "idle" and (r.get("memory") or {}).get("user_bytes_per_connection")]
    if idle:
        out += ["", "| | ws, relay | wss, relay | wss - ws: TLS state |", "|---|---:|---:|---:|"]
        for r in idle:
            m, vs = r["memory"], r.get("vs") or {}
            wm = ((by.get(f"relay/idle/{r['connections']}") or {}).get("memory")) or {}

            def b(v):
                return f"{v:,.0f} B" if v is not None else "-"
            out.append(f"| connections | {r['connections']:,} | {r['connections']:,} | |")
            if wm.get("server_rss_bytes_before") and m.get("server_rss_bytes_before"):
                out.append(f"| relay RSS before -> all connected | {wm['server_rss_bytes_before'] / 1e6:.1f} MB -> "
                           f"{wm['server_rss_bytes_connected'] / 1e6:.1f} MB | {m['server_rss_bytes_before'] / 1e6:.1f} MB"
                           f" -> {m['server_rss_bytes_connected'] / 1e6:.1f} MB | |")
            out.append(f"| user space per connection (delta / n) | {b(wm.get('user_bytes_per_connection'))} "
                       f"| {b(m.get('user_bytes_per_connection'))} | **{b(vs.get('tls_state_bytes_per_connection'))}** |")
            out.append(f"| user space, marginal (ramp slope) | {b(wm.get('user_bytes_per_connection_marginal'))} "
                       f"| {b(m.get('user_bytes_per_connection_marginal'))} "
                       f"| {b(vs.get('tls_state_bytes_per_connection_marginal'))} |")
            out.append(f"| kernel slab per socket | {b(wm.get('kernel_slab_bytes_per_socket'))} "
                       f"| {b(m.get('kernel_slab_bytes_per_socket'))} | |")
    return out


# ---------------------------------------------------------------------------------
# charts


def charts(results: list[dict], stem: Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing (apt-get install python3-matplotlib): no charts", file=sys.stderr)
        return []
    made = []

    def save(fig, suffix: str):
        fig.tight_layout()
        path = stem.with_name(stem.name + suffix + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path.name)

    ok = [r for r in results if r["status"] != "failed" and r.get("derived")]
    colors = {"raw": "#999999", "relay": "#1f77b4", "tls": "#d62728", "wss": "#2ca02c"}
    tlabel = {"raw": "rawfwd (raw ceiling)", "relay": "relay (plaintext)", "tls": "relay, TLS via HAProxy termination",
              "wss": "relay terminating TLS itself"}

    # 1. capacity throughput and CPU per million frames, per topology and size
    caps = [r for r in ok if r["mode"] == "closed"]
    groups = sorted({(r["binaries"], r["phones_per_binary"], r["size_bytes"]) for r in caps})
    if groups:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(7, 1.3 * len(groups) + 3), 8))
        targets_ = [t for t in ("raw", "relay", "tls", "wss") if any(r["target"] == t for r in caps)]
        bw = 0.8 / len(targets_)
        for ti, t in enumerate(targets_):
            xs, fps, cpm = [], [], []
            for gi, (b, p, s) in enumerate(groups):
                r = next((r for r in caps if r["target"] == t and r["binaries"] == b
                          and r["phones_per_binary"] == p and r["size_bytes"] == s), None)
                if r:
                    xs.append(gi + (ti - (len(targets_) - 1) / 2) * bw)
                    fps.append(r["derived"]["frames_per_s"])
                    cpm.append(cpu_per_mframe(r["derived"]) or 0)
            ax1.bar(xs, fps, bw, label=tlabel[t], color=colors[t])
            ax2.bar(xs, cpm, bw, label=tlabel[t], color=colors[t])
        for gi, (b, p, s) in enumerate(groups):
            r = next((r for r in caps if r["target"] == "relay" and r["binaries"] == b
                      and r["phones_per_binary"] == p and r["size_bytes"] == s), None)
            pct = r and r["derived"].get("pct_of_raw_ceiling")
            if pct:
                ax1.annotate(f"{pct:.0f}%", (gi, r["derived"]["frames_per_s"]), ha="center",
                             va="bottom", fontsize=8, color=colors["relay"])
        labels = [f"{b}x{p}\n{size_label(s)}" for b, p, s in groups]
        for ax in (ax1, ax2):
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels(labels, fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        ax1.set_ylabel("relayed frames/s (both directions)")
        ax1.set_title("Capacity (closed loop); % = relay as a share of the raw ceiling")
        ax1.legend(fontsize=8)
        ax2.set_ylabel("server CPU-s per million frames")
        ax2.set_title("CPU cost per frame (TLS: relay + HAProxy)")
        save(fig, "-throughput")

    # 2. latency percentiles vs offered load (open 50/90% and closed = 100%)
    # only clean runs: a run with lost frames or a closed connection has no meaningful
    # percentiles
    lat = [r for r in ok if r["mode"] in ("open", "closed") and r["target"] != "raw"
           and r.get("loadgen") and r["status"] == "ok"]
    sizes = sorted({r["size_bytes"] for r in lat})
    if lat:
        fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.5), squeeze=False)
        for ax, s in zip(axes[0], sizes):
            for (t, b, p) in sorted({(r["target"], r["binaries"], r["phones_per_binary"]) for r in lat if r["size_bytes"] == s}):
                rs = sorted((r for r in lat if r["size_bytes"] == s and r["target"] == t and r["binaries"] == b
                             and r["phones_per_binary"] == p), key=lambda r: r.get("load_fraction") or 1.0)
                xs = [100 * (r.get("load_fraction") or 1.0) for r in rs]
                ls = "-" if t == "relay" else "--"
                line, = ax.plot(xs, [r["loadgen"].get("lat_p99_us") for r in rs], ls, marker="o",
                                label=f"{t} {b}x{p} p99")
                ax.plot(xs, [r["loadgen"].get("lat_p50_us") for r in rs], ls, marker=".", alpha=0.5,
                        color=line.get_color(), label=f"{t} {b}x{p} p50")
            # the machine's floor: rawfwd's p99 at 50% of its own capacity
            for r in ok:
                if (r["target"] == "raw" and r["mode"] == "open" and r["size_bytes"] == s and r.get("loadgen")
                        and r["status"] == "ok" and r["loadgen"].get("lat_p99_us")):
                    ax.plot([100 * r["load_fraction"]], [r["loadgen"]["lat_p99_us"]], "x", color="#555555",
                            markersize=9, label=f"rawfwd {r['binaries']}x{r['phones_per_binary']} p99")
            ax.set_xlim(40, 105)
            ax.axhline(1000, color="k", lw=0.8, ls=":")
            ax.set_yscale("log")
            ax.set_xlabel("offered load, % of measured capacity (100 = closed loop)")
            ax.set_ylabel("round trip, us")
            ax.set_title(f"{size_label(s)} frames")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        fig.suptitle("Latency vs load (dotted: 1 ms p99 goal at 50%)")
        save(fig, "-latency")

    # 3. memory per idle connection
    idle = [r for r in ok if r["mode"] == "idle" and r.get("memory", {}).get("user_bytes_per_connection") is not None]
    if idle:
        labels, vals, cols = [], [], []
        for r in idle:
            m = r["memory"]
            labels.append(f"{r['target']}: relay user space\nper connection")
            vals.append(m["user_bytes_per_connection"])
            cols.append(colors[r["target"]])
            if m.get("user_bytes_per_connection_marginal") is not None:
                labels.append(f"{r['target']}: relay user space\nmarginal (ramp slope)")
                vals.append(m["user_bytes_per_connection_marginal"])
                cols.append("#aec7e8")
            if m.get("haproxy_user_bytes_per_connection") is not None:
                labels.append("tls: HAProxy user space\nper connection")
                vals.append(m["haproxy_user_bytes_per_connection"])
                cols.append("#ff9896")
            if m.get("kernel_slab_bytes_per_socket") is not None:
                labels.append(f"{r['target']}: kernel slab\nper socket")
                vals.append(m["kernel_slab_bytes_per_socket"])
                cols.append("#bbbbbb")
            if m.get("kernel_tcp_mem_bytes_per_socket") is not None:
                labels.append(f"{r['target']}: kernel TCP buffers\nper socket")
                vals.append(m["kernel_tcp_mem_bytes_per_socket"])
                cols.append("#dddddd")
        labels = [l.replace("\n", " ") for l in labels]
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(vals) + 1.6))
        ys = list(range(len(vals)))[::-1]
        ax.barh(ys, vals, color=cols)
        for y, v in zip(ys, vals):
            ax.annotate(f" {v:.0f} B", (v, y), ha="left", va="center", fontsize=8)
        ax.axvline(512, color="k", lw=0.8, ls=":", label="512 B goal (relay user space)")
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_xlim(0, max(vals) * 1.15)
        ax.set_xlabel("bytes")
        ax.set_title(f"Memory per idle connection ({', '.join(str(r['connections']) + ' ' + r['target'] for r in idle)})")
        ax.legend(fontsize=8)
        save(fig, "-memory")
    return made


# ---------------------------------------------------------------------------------


def make_cert(tmp: Path) -> Path:
    key, crt, pem = tmp / "key.pem", tmp / "cert.pem", tmp / "haproxy.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=30)
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    os.chmod(pem, 0o644)   # HAProxy reads it before it drops to its own user
    for f in (key, crt):
        os.chmod(f, 0o644)  # the relay (wss) reads them as nobody; a throwaway key
    return pem


class Progress:
    def __init__(self, tty: bool):
        self.tty, self.width = tty, shutil.get_terminal_size((120, 20)).columns
        self.t0 = time.monotonic()

    def __call__(self, i, n, sc, el, ph, fig) -> None:
        if not self.tty:
            return
        line = f"[{i}/{n} {time.monotonic() - self.t0:4.0f}s] {sc.name} {ph} {el:4.1f}s {fig}"
        sys.stdout.write("\r" + line[:self.width - 1].ljust(self.width - 1))
        sys.stdout.flush()

    def done(self, i, n, res) -> None:
        if self.tty:
            sys.stdout.write("\r" + " " * (self.width - 1) + "\r")
        der, js = res.get("derived") or {}, res.get("loadgen") or {}
        bits = [f"[{i}/{n} {time.monotonic() - self.t0:4.0f}s] {res['name']}: {res['status']}"]
        if der.get("frames_per_s"):
            bits.append(f"{fmt_num(der['frames_per_s'])} frames/s")
        if js.get("lat_p99_us") is not None and res["mode"] not in ("idle", "handshakes"):
            bits.append(f"p99 {fmt_num(js['lat_p99_us'])} us")
        cpm = cpu_per_mframe(der)
        if cpm:
            bits.append(f"{cpm:.2f} cpu-s/Mframe")
        mem = res.get("memory") or {}
        if mem.get("user_bytes_per_connection") is not None:
            bits.append(f"{mem['user_bytes_per_connection']:.0f} B/conn user space")
        if der.get("handshakes_per_s"):
            bits.append(f"{der['handshakes_per_s']:.0f} handshakes/s, p99 {fmt_num(js.get('hs_lat_p99_us'))} us")
        if der.get("handshakes_per_server_cpu_s"):
            bits.append(f"{der['handshakes_per_server_cpu_s']:.0f} per server cpu-s")
        if res.get("error"):
            bits.append(res["error"][:300])
        print(", ".join(bits), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke list (< 60 s)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="results directory")
    ap.add_argument("--only", help="regex over scenario names (capacity runs an open-loop "
                    "scenario depends on are added)")
    ap.add_argument("--list", action="store_true", help="print the scenario names and exit")
    ap.add_argument("--replot", metavar="JSON", help="redraw the charts and the table of a results "
                    "file, run nothing")
    ap.add_argument("--markdown", metavar="JSON", help="print the docs/benchmarks.md tables of a results "
                    "file and exit")
    ap.add_argument("--build", default=str(REPO / "build" / "gcc"), help="where the binaries are")
    ap.add_argument("--relay", help="relay binary (default BUILD/pyrycode-relay)")
    ap.add_argument("--loadgen", help="load generator (default BUILD/loadgen)")
    ap.add_argument("--rawfwd", help="raw forwarder (default BUILD/rawfwd)")
    args = ap.parse_args()

    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    if args.replot:
        path = Path(args.replot)
        doc = json.loads(path.read_text())
        made = charts(doc["scenarios"], path.with_suffix(""))
        print(summary_table(doc["scenarios"]))
        print(f"bench: redrew {', '.join(made)}")
        return 0
    scen = select(scenario_list(args.quick), args.only)
    if args.list:
        print("\n".join(s.name for s in scen))
        return 0
    if not scen:
        print(f"bench: no scenario matches {args.only!r} (see --list)", file=sys.stderr)
        return 2
    build = Path(args.build)
    relay = Path(args.relay or build / "pyrycode-relay")
    loadgen = Path(args.loadgen or build / "loadgen")
    rawfwd = Path(args.rawfwd or build / "rawfwd")
    need = [relay, loadgen] + ([rawfwd] if any(s.target == "raw" for s in scen) else [])
    missing = [str(p) for p in need if not os.access(p, os.X_OK)]
    if missing:
        print(f"bench: not built: {', '.join(missing)} (run: make CC=gcc BUILD=build/gcc)", file=sys.stderr)
        return 2
    if any(s.target == "tls" for s in scen) and not (shutil.which("haproxy") and shutil.which("openssl")):
        print("bench: haproxy/openssl missing (tools/deps.sh bench installs them)", file=sys.stderr)
        return 2
    if any(s.target == "wss" for s in scen) and not shutil.which("openssl"):
        print("bench: openssl missing (tools/deps.sh bench installs it)", file=sys.stderr)
        return 2

    ncpu = os.cpu_count() or 1
    cpu_server, cpu_gen = (0, 1) if ncpu >= 2 else (None, None)
    if ncpu < 2:
        print("bench: one CPU only: nothing pinned, figures are not comparable", file=sys.stderr)
    if cpu_gen is not None:
        os.sched_setaffinity(0, {cpu_gen})   # this harness stays off the server's CPU

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    day = dt.date.today().isoformat()
    stem = out_dir / (day + ("-quick" if args.quick else ""))

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = Path(tempfile.mkdtemp(prefix="pyrycode-bench-"))
    os.chmod(tmp, 0o755)
    results: list[dict] = []
    rc = 0
    try:
        cert = make_cert(tmp) if any(s.target in ("tls", "wss") for s in scen) else None
        env = Env(relay, loadgen, rawfwd, tmp, cert, cpu_server, cpu_gen, PortAllocator(PORT_BASE), sys.stdout.isatty(), nofile_limit())
        info = machine_info(env)
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        est = sum(s.duration_s + s.warmup_s + 2 + s.connections / 2000 for s in scen)
        print(f"bench: {len(scen)} scenarios, about {est / 60:.1f} min; server on CPU {cpu_server}, "
              f"load generator on CPU {cpu_gen}; {info['cpu_model']}, kernel {info['kernel']}", flush=True)
        prog = Progress(env.tty)
        for i, sc in enumerate(scen, 1):
            res = run_scenario(sc, i, len(scen), env, prog)
            results.append(res)
            env.results_by_name[sc.name] = res
            prog.done(i, len(scen), res)
            time.sleep(0.5)   # let TIME_WAIT and the server's exit settle
        relate(results)
        info["loadavg_end"] = os.getloadavg()
        doc = {
            "schema": 1, "date": day, "quick": args.quick, "started_utc": started,
            "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": info,
            "method": {
                "frames": "relayed frames in both directions (phone->binary + binary->phone); "
                          "a closed-loop round trip is two",
                "server_cpu": "utime+stime of the server process (all threads) from /proc/PID/stat, "
                              "sampled every 0.1 s; per-frame figures use the measurement window "
                              "(connected + warmup .. + duration), shrunk 0.2 s at each end",
                "open_loop_rate": "--rate = fraction x the phone->binary frames/s of the capacity run "
                                  "of the same target, topology and size",
                "memory": "user space: server RSS delta between start and all idle connections up "
                          "(1.5 s settled) / connections; kernel: /proc/net/sockstat TCP mem pages and "
                          "/proc/meminfo Slab deltas over the same interval / sockets on the machine "
                          "(both loopback ends; TLS: two hops)",
                "tls": "TLS via HAProxy termination (deploy/haproxy/pyrycode-relay-tls.cfg), HAProxy "
                       "pinned to the relay's CPU; throwaway P-256 self-signed cert",
            },
            "scenarios": results,
            "headline": headline(results),
            "targets": targets(results),
        }
        if any(r["target"] == "wss" for r in results):
            doc["method"]["wss"] = ("the relay terminating TLS itself (--https-listen, --tls-cert, --tls-key; "
                                    "BoringSSL in user space on its ring), throwaway P-256 self-signed cert made "
                                    "with openssl req -x509 -newkey ec at bench time; loadgen --insecure")
            doc["method"]["handshakes"] = ("loadgen --mode handshakes: each of N slots connects, completes TLS "
                                           "(wss) and a /v1/server upgrade with a new server-id, closes 1000 "
                                           "(echoed) and starts over; handshakes per relay CPU-second = "
                                           "handshakes/s / relay CPU share in the window")
        json_path = stem.with_suffix(".json")
        doc["charts"] = charts(results, stem)
        json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        print()
        print(summary_table(results))
        print()
        for t in doc["targets"]:
            met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
            val = f"{t['value']:.{2 if t['unit'] == 'x' else 1}f} {t['unit']}" if t["value"] is not None else "-"
            floor = f"; rawfwd at the same load: {t['raw_p99_us']:.1f} us" if t.get("raw_p99_us") else ""
            print(f"  goal: {t['goal']}: {val} ({met}){floor}")
        print(f"\nbench: wrote {json_path}" + "".join(f", {c}" for c in doc["charts"]))
        if any(r["status"] == "failed" for r in results):
            rc = 1
    except KeyboardInterrupt:
        print("\nbench: interrupted; no results written", file=sys.stderr)
        rc = 130
    finally:
        kill_all_children()
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
