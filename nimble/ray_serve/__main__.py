"""`python -m nimble.ray_serve`: deploy nimble on a Ray cluster and keep it until Ctrl-C or
SIGTERM (then the application is deleted; Serve too, when no other application is left).

Settings are nimble's own: `--model` and `--set name=value` (any `nimble serve` setting,
snake_case), then NIMBLE_* variables and `--set config=file.yaml`. Ray's HTTP proxy listens
on the settings' host and port (127.0.0.1:8000 by default).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import fields
from typing import Any

from nimble.config import Settings
from nimble.errors import ConfigError


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    from nimble.ray_serve.deployments import ServeOptions

    parser = argparse.ArgumentParser(prog="python -m nimble.ray_serve", description=__doc__)
    parser.add_argument("--address", default=None, help="Ray cluster (`auto`, host:port)")
    parser.add_argument("--app-name", default="nimble", help="Ray Serve application name")
    parser.add_argument("--route-prefix", default="/", help="HTTP path of the application")
    parser.add_argument(
        "--proxy-location",
        default="EveryNode",
        choices=("EveryNode", "HeadOnly", "Disabled"),
        help="where Ray runs its HTTP proxies (HeadOnly: one per cluster, e.g. one host)",
    )
    parser.add_argument("--model", action="append", default=[], help="model to serve")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a nimble setting"
    )
    for f in fields(ServeOptions):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None)
    args = parser.parse_args(argv)
    serve_args = {f.name: getattr(args, f.name) for f in fields(ServeOptions)}
    serve_args = {k: v for k, v in serve_args.items() if v is not None}
    return args, serve_args


def main(argv: list[str] | None = None) -> int:
    args, serve_args = parse(sys.argv[1:] if argv is None else argv)
    overrides: dict[str, Any] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"--set {item}: expected NAME=VALUE", file=sys.stderr)
            return 2
        overrides[name.strip().replace("-", "_")] = value
    if args.model:
        overrides["model"] = tuple(args.model)
    try:
        settings = Settings(**overrides)
    except (ConfigError, ValueError) as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from nimble.ray_serve.deployments import ServeOptions, build_application

    options, _ = ServeOptions.split(serve_args)
    ray.init(address=args.address, log_to_driver=False)
    serve.start(
        proxy_location=args.proxy_location,
        http_options={
            "host": settings.host,
            "port": settings.port,
            "keep_alive_timeout_s": settings.keep_alive,
        },
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(
            build_application(settings, options),
            name=args.app_name,
            route_prefix=args.route_prefix,
        )
        prefix = args.route_prefix.rstrip("/")
        print(
            f"nimble is served by Ray at http://{settings.host}:{settings.port}{prefix}/v1",
            flush=True,
        )
        stop.wait()
    finally:
        serve.delete(args.app_name)
        if not serve.status().applications:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
