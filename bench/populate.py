#!/usr/bin/env python3
"""Fills an auditor log with BENCH_EVENTS synthetic events for bench/run's query measurements.

Event n (0-based) has user_identity user-(n % 10007), event_data.account_id n % 100003 and
occurred_at 2024-01-01T00:00:00Z + 30 s * n, so a user matches ~n/10007 events, an account ~n/100003
and a one-hour window 120. bench/query.lua relies on these constants. Standard library only.

usage: populate.py HOST:PORT BASIC_AUTH TOTAL BATCH CONCURRENCY DEADLINE_SECONDS
Prints "BENCH_LOAD events=N seconds=S"; exits non-zero if any batch is refused or time runs out.
"""

import http.client
import json
import sys
import threading
import time

USERS, ACCOUNTS, BASE, STEP = 10007, 100003, 1704067200, 30
ACTIONS = ["create", "read", "update", "delete"]


def event(n):
    return {
        "event_type": "bench." + ACTIONS[n % 4],
        "user_identity": f"user-{n % USERS}",
        "action": ACTIONS[n % 4],
        "entity": "account",
        "entity_id": str(n % ACCOUNTS),
        "outcome": "success" if n % 10 else "failure",
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE + STEP * n)),
        "event_data": {"account_id": n % ACCOUNTS, "region": ["eu", "us", "ap"][n % 3], "n": n},
    }


def main():
    address, auth, total, batch, concurrency, deadline = sys.argv[1:7]
    total, batch, concurrency = int(total), int(batch), int(concurrency)
    deadline = time.monotonic() + float(deadline)
    host, port = address.rsplit(":", 1)
    starts = iter(range(0, total, batch))
    lock = threading.Lock()
    failures = []

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        headers = {"Authorization": "Basic " + auth, "Content-Type": "application/json"}
        while not failures and time.monotonic() < deadline:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            body = json.dumps([event(n) for n in range(start, min(start + batch, total))])
            try:
                conn.request("POST", "/events", body=body, headers=headers)
                response = conn.getresponse()
                text = response.read()
            except OSError as error:
                failures.append(f"batch at {start}: {error}")
                return
            if response.status != 201:
                failures.append(f"batch at {start}: {response.status} {text[:200]!r}")
                return

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - began
    if failures:
        sys.exit("populate: " + failures[0])
    if next(starts, None) is not None:
        sys.exit(f"populate: deadline reached before {total} events were written")
    print(f"BENCH_LOAD events={total} seconds={seconds:.2f}")


if __name__ == "__main__":
    main()
