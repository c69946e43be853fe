#!/usr/bin/python3
"""bench/zerocopy.py: what --zerocopy-min-bytes costs or saves on this machine (issue #12).

Closed loop at capacity, 10 binaries x 1 phone, window 4, frames of 1 KiB, 16 KiB and
64 KiB, plaintext (kTLS sockets never send_zc). For each frame size, each threshold in
--thresholds in turn, alternating, for --rounds rounds: the relay (one worker) on one
CPU, the load generator on the other. Reports relay CPU-seconds per million frames from
the difference between a run and one twice as long (connecting, warm-up and drain
cancel out), and its ratio to the threshold 0 (off) of the same round. Loopback
always copies a zero-copy send (pyrycode_relay_zerocopy_copied_total counts them), so
this measures what send_zc costs where it cannot help.

    /usr/bin/python3 bench/zerocopy.py --thresholds 0,4096,16384 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as benchrun  # noqa: E402
from workers import finish, steady  # noqa: E402

SIZES = (1024, 16384, 65536)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(benchrun.REPO / "build" / "gcc"))
    ap.add_argument("--thresholds", default="0,4096,16384", help="--zerocopy-min-bytes values to compare")
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    relay = str(Path(args.build) / "pyrycode-relay")
    loadgen = str(Path(args.build) / "loadgen")
    rows, port = [], benchrun.PORT_BASE + 800
    try:
        for r in range(args.rounds):
            for size in (int(x) for x in args.sizes.split(",")):
                base = None
                for zc in (int(x) for x in args.thresholds.split(",")):
                    port += 4
                    m = steady(relay, loadgen, ["--workers", "1", "--zerocopy-min-bytes", str(zc)],
                               ["--binaries", "10", "--phones", "1", "--window", "4", "--size", str(size),
                                "--warmup", "1", "--drain", "1", "--connect-timeout", "30"], args.duration, port)
                    per = m["cpu_s_per_mframe"]
                    if zc == 0:
                        base = per
                    row = {"round": r + 1, "size": size, "zerocopy_min_bytes": zc, "ok": m["ok"],
                           "cpu_s_per_mframe": per, "ratio_to_off": per / base if per and base else None,
                           "frames_per_s": m["long"]["frames_p2b_per_s"] + m["long"]["frames_b2p_per_s"],
                           "command_relay": m["command_relay"], "command_loadgen": m["command_loadgen"]}
                    rows.append(row)
                    print(f"round {r + 1} {size:>6} B zerocopy-min-bytes {zc:>6}: {per or 0:8.2f} cpu-s/Mframe"
                          f"  x{row['ratio_to_off'] or 0:.2f} of off  {row['frames_per_s']:.0f} frames/s"
                          f"  ok={row['ok']}", flush=True)
    finally:
        benchrun.kill_all_children()
    return finish(rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
