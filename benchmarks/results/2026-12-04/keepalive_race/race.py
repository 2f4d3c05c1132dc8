"""Reuse a pooled connection (httpx, the openai client's 5 s expiry) just before the client's
expiry, against `nimble serve --keep-alive K`: count requests that fail on a reused
connection. Prints the tally and each kind of error."""

import sys
import threading
import time

import httpx

url, rounds, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock()
tally = {"ok": 0, "failed": 0}
errors = []


def worker(i: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:  # keepalive_expiry 5.0
        for r in range(rounds):
            client.get("/v1/health/live").raise_for_status()
            time.sleep(4.975 + 0.0025 * ((i + r) % 10))  # 4.975 .. 4.9975 s idle
            try:
                client.get("/v1/health/live").raise_for_status()
                key = "ok"
            except httpx.HTTPError as exc:
                key = "failed"
                errors.append(f"{type(exc).__name__}: {exc}")
            with lock:
                tally[key] += 1


pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
start = time.monotonic()
for t in pool:
    t.start()
for t in pool:
    t.join()
print(f"{url} {tally} in {time.monotonic() - start:.0f}s")
for e in sorted(set(errors)):
    print("  ", errors.count(e), e)
