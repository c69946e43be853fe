#!/usr/bin/python3
"""bench/lowload.py: relay CPU at low load, with and without batched wake-ups (issue #17).

The two low-load points of issue #17, open loop (fixed send times, latency from the
intended time): 5,000 frames/s of 64 B over 100 binaries x 4 phones, and 1,000 frames/s
of 4 KiB over 1,000 binaries x 1 phone. The relay (one worker) on one CPU, the load
generator on the other; each --batch-wait-us value in turn, alternating, for --rounds
rounds. Reports relay CPU-seconds per million frames and frames per wake-up (frames
relayed / times a worker slept in the kernel), both from the difference between a run
and one twice as long (so connecting, warm-up and drain cancel out), and the p99 round
trip of the longer run.

    /usr/bin/python3 bench/lowload.py --waits 0,50,200 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as benchrun  # noqa: E402
from workers import finish, steady  # noqa: E402

POINTS = (  # (binaries, phones, frame bytes, frames/s over all phones)
    (100, 4, 64, 5000),
    (1000, 1, 4096, 1000),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(benchrun.REPO / "build" / "gcc"))
    ap.add_argument("--relay")
    ap.add_argument("--waits", default="0,50,200", help="--batch-wait-us values to compare")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    relay = args.relay or str(Path(args.build) / "pyrycode-relay")
    loadgen = str(Path(args.build) / "loadgen")
    rows, port = [], benchrun.PORT_BASE + 700
    try:
        for r in range(args.rounds):
            for b, p, size, rate in POINTS:
                for wait in (int(x) for x in args.waits.split(",")):
                    port += 4
                    m = steady(relay, loadgen, ["--workers", "1", "--batch-wait-us", str(wait)],
                               ["--binaries", str(b), "--phones", str(p), "--size", str(size), "--mode", "open",
                                "--rate", str(rate), "--src-ips", "4", "--warmup", "1", "--drain", "1",
                                "--connect-timeout", "30"], args.duration, port)
                    row = {"round": r + 1, "topology": f"{b}x{p}", "size": size, "rate": rate,
                           "batch_wait_us": wait, "ok": m["ok"], "cpu_s_per_mframe": m["cpu_s_per_mframe"],
                           "p99_us": m["long"]["lat_p99_us"],
                           "frames_per_wakeup": m["frames"] / m["waits"] if m["waits"] > 0 else None,
                           "frames_per_sleep": m["frames"] / m["sleeps"] if m["sleeps"] > 0 else None,
                           "command_relay": m["command_relay"], "command_loadgen": m["command_loadgen"]}
                    rows.append(row)
                    print(f"round {r + 1} {b}x{p} {size} B {rate}/s batch-wait {wait:>4} us: "
                          f"{row['cpu_s_per_mframe'] or 0:.2f} cpu-s/Mframe, p99 {row['p99_us']:.0f} us, "
                          f"{row['frames_per_wakeup'] or 0:.2f} frames/wait, {row['frames_per_sleep'] or 0:.2f} frames/sleep, "
                          f"ok={row['ok']}", flush=True)
    finally:
        benchrun.kill_all_children()
    return finish(rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
