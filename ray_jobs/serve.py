"""Ray Serve applications: recommendation and generation, following the workspace's LATEST pointers.

    serve deploy serve_config.yaml                              # on a cluster (GPU replicas, autoscaling)
    musicray serve --local --root ./workspace [--port 8000]     # the same apps on this machine's CPU

Two applications, each a FastAPI ingress (``musicray.serving`` builds the apps; OpenAPI docs at
``/docs`` and ``/generate/docs``):

    recommend  route prefix /           POST /recommend, GET /similar/{track_id}, GET /tracks/{track_id},
                                        GET /healthz, GET /version
    generate   route prefix /generate   POST /generate (JSON), POST /generate/upload (a seed clip, multipart),
                                        GET /generate/healthz, GET /generate/version

The recommender's forward passes go through ``@serve.batch``: requests that arrive together share
one forward pass and one index query. Each replica follows the LATEST pointers (polled every
``poll_seconds``; a ``user_config`` change re-checks at once) and swaps its served state in one
assignment once the new one is loaded (see ``musicray.serving.Follower``).

Ingress: requests enter through HAProxy (the binary ships with Ray) rather than Serve's Python
proxy, with Ray's throughput-optimised request path (``INGRESS_ENV``). Both are read by the Serve
processes when Ray starts them, so they are set wherever Ray starts: here for ``--local``, in
``deploy/Dockerfile`` for KubeRay and in ``cluster.yaml``'s ``ray start`` commands. On a 2-core
machine the Python proxy held Serve to a third of a plain uvicorn app's throughput (the README has
the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading

import torch
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from musicray import serving, storage

# Ray Serve's HAProxy ingress and its throughput-optimised request path (direct ingress, no extra
# thread hops, buffered request logs); an explicit "0" in the environment turns either off.
INGRESS_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}

MAX_BATCH_SIZE = 32
BATCH_WAIT_TIMEOUT_S = 0.005  # at most 5 ms added to a request's latency to gather a batch


class RecommendArgs(BaseModel):
    """Arguments of the recommend app (``args:`` in serve_config.yaml)."""
    root: str = Field(description="workspace root (local folder or s3://) the refresh publishes to")
    default_model: str = "lstm"
    poll_seconds: float = serving.DEFAULT_POLL_SECONDS
    batching: bool = True  # off only to measure what batching buys (benchmarks/serve.py)
    num_cpus: float = 1
    num_gpus: float = 0
    replicas: int | None = None  # a fixed count instead of autoscaling (tests, benchmarks)


class GenerateArgs(BaseModel):
    """Arguments of the generate app (``args:`` in serve_config.yaml)."""
    root: str
    poll_seconds: float = serving.DEFAULT_POLL_SECONDS
    max_upload_bytes: int = serving.MAX_UPLOAD_BYTES
    num_cpus: float = 1
    num_gpus: float = 0
    replicas: int | None = None


def _device() -> str:
    # A replica sees a GPU only when its ray_actor_options asked for one (num_gpus > 0).
    return "cuda" if torch.cuda.is_available() else "cpu"


def _cpu_threads() -> None:
    # One replica per core: more intra-op threads only contend on small per-request matmuls.
    if not torch.cuda.is_available():
        torch.set_num_threads(1)


@serve.deployment(name="Recommender", max_ongoing_requests=64, health_check_period_s=10,
                  health_check_timeout_s=30, graceful_shutdown_timeout_s=20)
@serve.ingress()
class Recommender:
    def __init__(self, root: str, default_model: str = "lstm", poll_seconds: float = serving.DEFAULT_POLL_SECONDS,
                 batching: bool = True):
        _cpu_threads()
        self.service = serving.RecommendService(root, device=_device(), poll_seconds=poll_seconds,
                                                default_model=default_model,
                                                forward=self.forward_batched if batching else None)

    def __serve_build_asgi_app__(self):
        return serving.recommend_api(self.service)

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def forward_batched(self, items: list) -> list:
        # In a worker thread: torch and voyager release the GIL, so the event loop keeps taking
        # requests (and gathering the next batch) while this one computes.
        return await asyncio.to_thread(serving.recommend_batch, items)

    def reconfigure(self, user_config: dict) -> None:
        """``user_config``: poll_seconds, max_batch_size, batch_wait_timeout_s; any change also
        re-reads the LATEST pointer at once (e.g. ``reload: <anything new>`` after a publish)."""
        follower = self.service.follower
        follower.poll_seconds = float(user_config.get("poll_seconds", follower.poll_seconds))
        if "max_batch_size" in user_config:
            self.forward_batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.forward_batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        follower.refresh()

    def check_health(self) -> None:
        if not self.service.follower.alive:
            raise RuntimeError("the LATEST follower thread stopped: this replica no longer sees new snapshots")

    def __del__(self):
        self.service.follower.close()


@serve.deployment(name="Generator", max_ongoing_requests=4, health_check_period_s=10, health_check_timeout_s=30,
                  graceful_shutdown_timeout_s=60)
@serve.ingress()
class Generator:
    def __init__(self, root: str, poll_seconds: float = serving.DEFAULT_POLL_SECONDS,
                 max_upload_bytes: int = serving.MAX_UPLOAD_BYTES):
        self.service = serving.GenerateService(root, device=_device(), poll_seconds=poll_seconds,
                                               max_upload_bytes=max_upload_bytes)

    def __serve_build_asgi_app__(self):
        return serving.generate_api(self.service)

    def reconfigure(self, user_config: dict) -> None:
        follower = self.service.follower
        follower.poll_seconds = float(user_config.get("poll_seconds", follower.poll_seconds))
        follower.refresh()

    def check_health(self) -> None:
        if not self.service.follower.alive:
            raise RuntimeError("the LATEST follower thread stopped: this replica no longer sees new models")

    def __del__(self):
        self.service.follower.close()


def _options(args: RecommendArgs | GenerateArgs) -> dict:
    """Resources from the args; serve_config.yaml's deployment settings override these on a cluster."""
    options = {"ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}}
    if args.replicas is not None:
        options["num_replicas"] = args.replicas
    return options


def recommend_app(args: RecommendArgs) -> Application:
    args = RecommendArgs.model_validate(args) if isinstance(args, dict) else args
    return Recommender.options(**_options(args)).bind(storage.normalize(args.root), args.default_model,
                                                      args.poll_seconds, args.batching)


def generate_app(args: GenerateArgs) -> Application:
    args = GenerateArgs.model_validate(args) if isinstance(args, dict) else args
    return Generator.options(**_options(args)).bind(storage.normalize(args.root), args.poll_seconds,
                                                    args.max_upload_bytes)


ROUTES = {"recommend": "/", "generate": "/generate"}


def run_local(root: str, *, port: int = 8000, host: str = "127.0.0.1", poll_seconds: float = 5.0,
              replicas: int = 1, generate: bool = True) -> dict[str, str]:
    """Start both apps on the Ray this process is connected to (CPU replicas); returns their URLs."""
    serve.start(http_options={"host": host, "port": port})
    common = {"root": root, "poll_seconds": poll_seconds, "num_cpus": 0, "replicas": replicas}
    serve.run(recommend_app(common), name="recommend", route_prefix=ROUTES["recommend"], blocking=False)
    urls = {"recommend": f"http://{host}:{port}/recommend", "docs": f"http://{host}:{port}/docs"}
    if generate:
        serve.run(generate_app(common), name="generate", route_prefix=ROUTES["generate"], blocking=False)
        urls.update({"generate": f"http://{host}:{port}/generate", "generate docs": f"http://{host}:{port}/generate/docs"})
    return urls


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="musicray serve", description=__doc__.split("\n")[0])
    parser.add_argument("--local", action="store_true", required=True,
                        help="run on a local Ray with CPU replicas (a cluster uses `serve deploy serve_config.yaml`)")
    parser.add_argument("--root", default="workspace", help="workspace root (default ./workspace)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="how often replicas check LATEST")
    parser.add_argument("--replicas", type=int, default=1, help="replicas of each deployment")
    parser.add_argument("--no-generate", action="store_true", help="serve recommendations only")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = storage.normalize(args.root)
    if serving.snapshot_pointer(root) is None:
        print(f"musicray serve: error: no embedding snapshot in {root}: run `musicray refresh` (or the quickstart) "
              f"first", file=sys.stderr)
        return 2
    import ray

    for name, value in INGRESS_ENV.items():  # before Ray starts: its Serve processes inherit them
        os.environ.setdefault(name, value)
    ray.init(address="local", include_dashboard=False)  # --local: a Ray of its own, never RAY_ADDRESS
    try:
        urls = run_local(root, port=args.port, host=args.host, poll_seconds=args.poll_seconds,
                         replicas=args.replicas, generate=not args.no_generate)
        for name, url in urls.items():
            print(f"  {name:<14} {url}")
        print("serving; Ctrl-C stops", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
