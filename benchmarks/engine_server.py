"""llama.cpp's own server, alone: xllamacpp.Server started in-process, kept up until SIGTERM.

This is the "engine" baseline of run_llm.py: the same engine nimble drives, with nothing in
front of it. It serves llama.cpp's OpenAI-compatible routes (/v1/chat/completions with SSE,
/health) on 127.0.0.1:PORT.

    python benchmarks/engine_server.py --model M.gguf --port 8081 --parallel 8 --ctx 8192
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

import xllamacpp


def build_params(args: argparse.Namespace) -> Any:
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_parallel = args.parallel
    # the same KV layout as nimble's llama.cpp engine: a full window per slot
    params.kv_unified = False
    params.n_ctx = args.ctx * args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.ui = False
    params.verbosity = 3 if args.verbose else 1  # info (a timing line per request) or errors
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="llama.cpp's info log")
    args = parser.parse_args()

    server = xllamacpp.Server(build_params(args))
    # after the load: llama.cpp installs its own SIGINT/SIGTERM handlers while loading
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"engine server listening on {server.listening_address}", flush=True)
    stop.wait()
    del server  # frees the model and stops the HTTP thread


if __name__ == "__main__":
    main()
