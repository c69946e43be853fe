#!/usr/bin/python3
"""bench/issue17.py: the goals of issue #17, measured against the commit before that work.

Three points, each for two relay binaries (--before: built from the commit before the
fused payload pass and the batched wake-ups; --after: this tree), alternating within
each round, relay on CPU 0 with one worker, loadgen on CPU 1:

  capacity   100 binaries x 4 phones, 4 KiB frames, closed loop (window 2 per phone)
  open 64 B  100 x 4, 64 B frames, 5,000 frames/s in total, open loop
  open 4 KiB 1000 x 1, 4 KiB frames, 1,000 frames/s in total, open loop

Relay CPU-seconds per million frames come from the difference between a run and one
twice as long (connecting, warm-up and drain cancel out); the p99 round trip is the
longer run's. Frames per sleep count the relay's voluntary context switches (the
kernel's count of its wake-ups). The floor, tools/rawfwd (a trivial io_uring forwarder,
no WebSocket) carrying the same traffic, is measured in the same round (--no-floor
skips it). Prints each row and the before/after ratio per round.

    make CC=gcc all tools
    git worktree add /tmp/before17 03679d2 && make -C /tmp/before17 CC=gcc build/gcc/pyrycode-relay
    /usr/bin/python3 bench/issue17.py --before /tmp/before17/build/gcc/pyrycode-relay --rounds 2
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as benchrun  # noqa: E402
from workers import finish, steady  # noqa: E402

POINTS = {  # name: loadgen shape
    "capacity 100x4 4KiB": ["--binaries", "100", "--phones", "4", "--size", "4096", "--window", "2"],
    "open 100x4 64B 5000/s": ["--binaries", "100", "--phones", "4", "--size", "64", "--mode", "open",
                              "--rate", "5000"],
    "open 1000x1 4KiB 1000/s": ["--binaries", "1000", "--phones", "1", "--size", "4096", "--mode", "open",
                                "--rate", "1000"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the relay built from the commit before issue #17's work")
    ap.add_argument("--build", default=str(benchrun.REPO / "build" / "gcc"))
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-floor", action="store_true", help="skip the rawfwd runs")
    ap.add_argument("--only", help="regex over the point names (e.g. 'open')")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    after = str(Path(args.build) / "pyrycode-relay")
    loadgen = str(Path(args.build) / "loadgen")
    rows, port = [], benchrun.PORT_BASE + 900
    common = ["--src-ips", "4", "--warmup", "1", "--drain", "1", "--connect-timeout", "30"]
    try:
        for r in range(args.rounds):
            for name, shape in POINTS.items():
                if args.only and not re.search(args.only, name):
                    continue
                per = {}
                servers = [("before", args.before), ("after", after)]
                if not args.no_floor:
                    servers.append(("rawfwd", str(Path(args.build) / "rawfwd")))
                for label, relay in servers:
                    port += 4
                    m = steady(relay, loadgen, ["--workers", "1"], [*shape, *common], args.duration, port)
                    per[label] = m["cpu_s_per_mframe"]
                    row = {"round": r + 1, "point": name, "relay": label, "ok": m["ok"],
                           "cpu_s_per_mframe": m["cpu_s_per_mframe"], "p99_us": m["long"]["lat_p99_us"],
                           "frames_per_wakeup": m["frames"] / m["waits"] if m["waits"] > 0 else None,
                           "frames_per_sleep": m["frames"] / m["sleeps"] if m["sleeps"] > 0 else None,
                           "command_relay": m["command_relay"], "command_loadgen": m["command_loadgen"]}
                    rows.append(row)
                    print(f"round {r + 1} {name:<24} {label:<6} {row['cpu_s_per_mframe'] or 0:7.2f} cpu-s/Mframe"
                          f"  p99 {row['p99_us']:8.0f} us  {row['frames_per_sleep'] or 0:6.2f} frames/sleep"
                          f"  ok={row['ok']}", flush=True)
                if per.get("before") and per.get("after"):
                    floor = (f", after/rawfwd = {per['after'] / per['rawfwd']:.2f}x" if per.get("rawfwd") else "")
                    print(f"round {r + 1} {name:<24} before/after = {per['before'] / per['after']:.2f}x{floor}",
                          flush=True)
    finally:
        benchrun.kill_all_children()
    return finish(rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
