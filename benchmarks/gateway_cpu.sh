#!/usr/bin/env bash
# CPU per proxied request of `nimble gateway` against the fake engine (RESULTS.md 2026-12-03 11:00):
# a replica and a gateway on fixed ports 18001/18002, 300 streamed requests each way, twice,
# CPU of each process from /proc. SRC=<tree> runs another source tree. Prints to the console.
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=${SRC:-$PWD}
.venv/bin/python -m nimble.cli.main serve --model fake --fake-token-delay 0 --port 18001 --log-level warning > /tmp/rep.log 2>&1 &
REP=$!
for _ in $(seq 100); do curl -sf localhost:18001/v1/health/ready >/dev/null && break; sleep 0.2; done
.venv/bin/python -m nimble.cli.main gateway --upstream http://127.0.0.1:18001 --port 18002 --log-level warning $GWARGS > /tmp/gw.log 2>&1 &
GW=$!
for _ in $(seq 100); do curl -sf localhost:18002/v1/health/ready >/dev/null && break; sleep 0.2; done
GW=$GW REP=$REP .venv/bin/python - <<'PY'
import httpx, time, os
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
gw, rep = int(os.environ["GW"]), int(os.environ["REP"])
body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there " * 20}], "max_tokens": 4, "stream": True}
for port, name in ((18001, "direct"), (18002, "gateway"), (18001, "direct"), (18002, "gateway")):
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False)
    for _ in range(20):
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            for _ in r.iter_raw(): pass
    g0, r0, t0 = cpu(gw), cpu(rep), time.perf_counter()
    n = 300
    for _ in range(n):
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            for _ in r.iter_raw(): pass
    dt = time.perf_counter() - t0
    print(f"{name}: {1000*dt/n:.2f} ms/request, gateway cpu {1000*(cpu(gw)-g0)/n:.2f} ms/req, replica cpu {1000*(cpu(rep)-r0)/n:.2f} ms/req")
# idle cost
g0, t0 = cpu(gw), time.perf_counter(); time.sleep(10); print(f"idle gateway cpu {100*(cpu(gw)-g0)/(time.perf_counter()-t0):.1f}% of a core")
PY
kill $GW $REP
