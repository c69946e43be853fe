#!/usr/bin/python3
"""bench/workers.py: the relay with 1 and with N workers on the same CPUs (issue #11).

For each worker count it starts the relay and the load generator on the same CPU set
(the relay's workers pinned one per CPU by the relay itself, the generator's threads
free to run on those CPUs), runs a closed-loop capacity scenario, and reports:

  - relay CPU-seconds per million relayed frames (utime+stime of the relay process
    over the measured window, divided by phone->binary + binary->phone frames): the
    figure that says whether more workers cost more per frame;
  - frames per second (generator-side);
  - connections per second through upgrade (and, with N workers, handoff): the
    generator's connect phase, binaries + phones / connect_s;
  - the relay's cross-worker messages (handoffs) against the frames relayed.

Every figure is from this run on this machine; compare the rows with each other, not
with another run (the machines are shared). Usage:

    /usr/bin/python3 bench/workers.py                     # 100x4 and 1000x1, 64 B, workers 1 and 2
    /usr/bin/python3 bench/workers.py --cpus 0,1 --workers 1,2 --topo 100x4 --rounds 3

Builds nothing: `make` first (build/gcc). Every child is killed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as benchrun  # noqa: E402  (the harness: Child, proc_cpu_s, ports, cleanup)

REPO = benchrun.REPO


def scrape(port: int) -> dict:
    """Relay-wide sums of the per-worker handoff and wait counters."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    def total(family: str) -> float:
        return sum(float(m.group(1)) for m in re.finditer(r'^' + family + r'\{[^}]*\} (\S+)$', text, re.M))
    return {"handoffs": total("pyrycode_relay_worker_handoffs_sent_total"),
            "waits": total("pyrycode_relay_worker_waits_total")}


def voluntary_switches(pid: int) -> int:
    """Times the process's threads went to sleep (voluntary context switches, /proc):
    the kernel's own count of wake-ups, whatever the relay's counters say."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def is_rawfwd(server_bin: str) -> bool:
    return Path(server_bin).name == "rawfwd"


def server_argv(server_bin: str, port: int, mport: int, relay_args: list) -> list:
    """The benchmark server's command line, unprivileged: rawfwd (by name) on port, or
    the relay on port with its metrics on mport, limits out of the way, relay_args."""
    if is_rawfwd(server_bin):
        return [str(benchrun.RUN_UNPRIVILEGED), server_bin, "--listen", f"127.0.0.1:{port}"]
    return [str(benchrun.RUN_UNPRIVILEGED), server_bin, "--insecure-listen", f"127.0.0.1:{port}",
            f"--metrics-listen=127.0.0.1:{mport}", "--max-connections", "30000",
            *benchrun.per_ip_off(server_bin), "--rate-limit-burst", "0", "--grace-period", "0", *relay_args]


def measure(relay_bin: str, loadgen_bin: str, relay_cpus: str, loadgen_cpus: str, relay_args: list,
            loadgen_args: list, port: int, mport: int, timeout_s: float) -> dict:
    """One run: the relay pinned to relay_cpus with relay_args, the generator pinned to
    loadgen_cpus with loadgen_args; relay CPU over the generator's whole run, the
    generator's JSON result, and the relay's cross-worker messages and wake-ups. A
    relay_bin named rawfwd runs tools/rawfwd instead (the floor: the same traffic
    without WebSocket, relay_args ignored) with the generator in --raw mode."""
    raw = is_rawfwd(relay_bin)
    argv = ["taskset", "-c", relay_cpus, *server_argv(relay_bin, port, mport, relay_args)]
    relay = benchrun.Child("relay", argv, None, stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if raw:
                    # nothing may connect but the generator: rawfwd pairs in arrival order
                    if not benchrun.listening(port):
                        raise OSError("not yet")
                else:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or not relay.alive():
                    raise RuntimeError("relay did not come up")
                time.sleep(0.05)
        url = f"tcp://127.0.0.1:{port}" if raw else f"ws://127.0.0.1:{port}"
        lg = ["taskset", "-c", loadgen_cpus, loadgen_bin, "--quiet", "--url", url, *loadgen_args]
        before = {"handoffs": 0.0, "waits": 0.0} if raw else scrape(mport)
        cpu0, vcsw0 = benchrun.proc_cpu_s(relay.pid), voluntary_switches(relay.pid)
        out = benchrun.subprocess.run(lg, capture_output=True, text=True, timeout=timeout_s)
        cpu1, vcsw1 = benchrun.proc_cpu_s(relay.pid), voluntary_switches(relay.pid)
        after = before if raw else scrape(mport)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        frames = res["frames_p2b"] + res["frames_b2p"]
        return {
            "ok": res["ok"], "result": res, "frames": frames, "relay_cpu_s": cpu1 - cpu0,
            "cpu_s_per_mframe": (cpu1 - cpu0) / frames * 1e6 if frames else None,
            "handoffs": after["handoffs"] - before["handoffs"],
            "waits": after["waits"] - before["waits"],
            "sleeps": vcsw1 - vcsw0,
            "command_relay": relay.command(), "command_loadgen": " ".join(lg),
        }
    finally:
        relay.stop()


def steady(relay_bin: str, loadgen_bin: str, relay_args: list, loadgen_args: list, duration: float,
           port: int) -> dict:
    """Two runs (relay on CPU 0, generator on CPU 1), one twice as long as the other
    (loadgen_args without --duration): their difference is the steady state, free of the
    connect, warm-up and drain costs both share. Uses ports port..port+3."""
    runs = [measure(relay_bin, loadgen_bin, "0", "1", relay_args, [*loadgen_args, "--duration", str(d)],
                    port + 2 * i, port + 2 * i + 1, d + 60)
            for i, d in enumerate((duration, 2 * duration))]
    short, long_ = runs
    frames = long_["frames"] - short["frames"]
    cpu = long_["relay_cpu_s"] - short["relay_cpu_s"]
    return {"ok": short["ok"] and long_["ok"], "frames": frames, "waits": long_["waits"] - short["waits"],
            "sleeps": long_["sleeps"] - short["sleeps"],
            "cpu_s_per_mframe": cpu / frames * 1e6 if frames > 0 else None, "long": long_["result"],
            "command_relay": long_["command_relay"], "command_loadgen": long_["command_loadgen"]}


def finish(rows: list, json_path) -> int:
    """Write the rows (when asked) and say whether every run was ok (the exit status)."""
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


def one(args, workers: int, binaries: int, phones: int, port: int, mport: int) -> dict:
    threads = min(args.threads or workers, binaries)
    m = measure(args.relay, args.loadgen, args.cpus, args.cpus, ["--workers", str(workers)],
                ["--binaries", str(binaries), "--phones", str(phones), "--size", str(args.size),
                 "--src-ips", "4", "--warmup", "1", "--duration", str(args.duration), "--drain", "1",
                 "--connect-timeout", "30", "--threads", str(threads)],
                port, mport, args.duration + 60)
    res = m["result"]
    # relay CPU over the generator's whole run (connect, warm-up, window, drain) against
    # the frames of its window: an upper bound that inflates every row alike
    return {
        "workers": workers, "topology": f"{binaries}x{phones}", "threads": threads, "ok": m["ok"],
        "frames_per_s": res["frames_p2b_per_s"] + res["frames_b2p_per_s"],
        "relay_cpu_s": m["relay_cpu_s"], "cpu_s_per_mframe": m["cpu_s_per_mframe"],
        "connections_per_s": res["connections"] / res["connect_s"] if res["connect_s"] else None,
        "handoffs": m["handoffs"], "frames": m["frames"],
        "command_relay": m["command_relay"], "command_loadgen": m["command_loadgen"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(REPO / "build" / "gcc"))
    ap.add_argument("--relay")
    ap.add_argument("--loadgen")
    ap.add_argument("--cpus", default="0,1", help="CPU list for the relay and the generator (taskset)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--threads", type=int, default=0, help="generator threads (default: as many as workers)")
    ap.add_argument("--topo", default="100x4,1000x1")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    args.relay = args.relay or str(Path(args.build) / "pyrycode-relay")
    args.loadgen = args.loadgen or str(Path(args.build) / "loadgen")
    rows = []
    port = benchrun.PORT_BASE + 500
    try:
        for r in range(args.rounds):
            for topo in args.topo.split(","):
                b, p = (int(x) for x in topo.split("x"))
                for w in (int(x) for x in args.workers.split(",")):
                    port += 2
                    row = one(args, w, b, p, port, port + 1)
                    row["round"] = r + 1
                    rows.append(row)
                    print(f"round {r + 1} {row['topology']:>7} workers {w}: {row['frames_per_s'] / 1e3:7.1f}k frames/s, "
                          f"{row['cpu_s_per_mframe']:.2f} relay cpu-s/Mframe, "
                          f"{row['connections_per_s']:.0f} conn/s, {row['handoffs']:.0f} handoffs "
                          f"for {row['frames']} frames, ok={row['ok']}", flush=True)
    finally:
        benchrun.kill_all_children()
    return finish(rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
