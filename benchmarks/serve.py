"""Serving throughput and latency of POST /recommend: Ray Serve with and without batching, and plain FastAPI.

    python -m benchmarks.serve --root workspace [--concurrency 1 8 32] [--seconds 10] [--max-requests 20000]

Closed loop on loopback: N clients each send a request, wait for the answer, send the next, for
``--seconds`` after a warm-up (or until ``--max-requests`` answers, whichever comes first). Three
servers answer the same requests with the same code (``musicray.serving``) and the same model:

    serve-batched   Ray Serve, one replica, @serve.batch (max 32, 5 ms wait), HAProxy ingress: as deployed
    serve-unbatched Ray Serve, one replica, one forward pass per request
    plain-fastapi   the same FastAPI app in one uvicorn process, no Ray (one forward pass per request)

Beside them, at 32 clients, the floor of each server (``serve-trivial``, ``plain-trivial``: a
FastAPI app answering a constant, no model), and POST /generate through Serve at 1 and 4 clients
(``--generate-seconds`` clips of random catalog tracks; ``--no-generate`` skips it).

Requests: random histories of 1-20 catalog tracks of the workspace's latest snapshot, a random
context, k = 10, the LSTM model. Targets: zero errors, and at concurrency 32 serve-batched at least
matches plain-fastapi's throughput with at most twice its p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

TARGET_CONCURRENCY = 32


@dataclass
class LoadResult:
    variant: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies: np.ndarray  # seconds, of the successful requests

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if len(self.latencies) else float("nan")

    def row(self) -> str:
        return (f"| {self.variant} | {self.concurrency} | {self.requests} | {self.rps:.0f} | {self.percentile(50):.1f} | "
                f"{self.percentile(95):.1f} | {self.percentile(99):.1f} | {self.errors} |")


def request_bodies(root: str, count: int, model: str, seed: int = 0) -> list[bytes]:
    from musicray.snapshots import latest_snapshot

    track_ids = latest_snapshot(root).vectors(["track_id"]).column("track_id").to_pylist()
    rng = random.Random(seed)
    return [json.dumps({"history": rng.sample(track_ids, rng.randint(1, min(20, len(track_ids)))), "k": 10,
                        "model": model, "context": {"hour": rng.randrange(24), "weekday": rng.randrange(7)}}).encode()
            for _ in range(count)]


async def closed_loop(url: str, bodies: list[bytes], concurrency: int, seconds: float, warmup: float,
                      max_requests: int, timeout: float = 30.0) -> tuple[int, int, float, np.ndarray]:
    """(answers, errors, measured seconds, latencies) of ``concurrency`` clients in a closed loop."""
    import aiohttp

    latencies, errors, sent = [], 0, 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout,
                                     headers={"content-type": "application/json"}) as session:
        started = time.perf_counter()
        measure_from, stop_at = started + warmup, started + warmup + seconds

        async def client(n: int):
            nonlocal errors, sent
            i = n
            while time.perf_counter() < stop_at and len(latencies) < max_requests:
                body = bodies[i % len(bodies)]
                i += concurrency
                began = time.perf_counter()
                try:
                    async with session.post(url, data=body) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                ended = time.perf_counter()
                if began >= measure_from:
                    sent += 1
                    if ok:
                        latencies.append(ended - began)
                    else:
                        errors += 1

        await asyncio.gather(*(client(n) for n in range(concurrency)))
        elapsed = min(time.perf_counter(), stop_at) - measure_from
    return len(latencies), errors, max(elapsed, 1e-9), np.array(latencies)


def run_load(variant: str, base: str, bodies: list[bytes], levels: list[int], args,
             path: str = "/recommend") -> list[LoadResult]:
    results = []
    for concurrency in levels:
        answers, errors, seconds, latencies = asyncio.run(closed_loop(
            f"{base}{path}", bodies, concurrency, args.seconds, args.warmup, args.max_requests))
        results.append(LoadResult(variant, concurrency, answers, errors, seconds, latencies))
        print(results[-1].row(), flush=True)
    return results


def generation_bodies(root: str, count: int, seconds: float, seed: int = 0) -> list[bytes]:
    from musicray.snapshots import latest_snapshot

    track_ids = latest_snapshot(root).vectors(["track_id"]).column("track_id").to_pylist()
    rng = random.Random(seed)
    return [json.dumps({"seed_track_id": rng.choice(track_ids), "seconds": seconds, "seed": i,
                        "format": "wav"}).encode() for i in range(count)]


def trivial_api():
    """The floor: a FastAPI app that answers POST /recommend with a constant, no model."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/recommend")
    async def recommend() -> dict:
        return {"tracks": []}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def trivial_deployment():
    """The trivial app as a Serve deployment: one replica, one CPU, as the recommend app runs."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    @serve.ingress(trivial_api())
    class Trivial:
        pass

    return Trivial


def wait_healthy(base: str, timeout: float = 180.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base} did not become healthy within {timeout:.0f} s")


def serve_plain(root: str, port: int, trivial: bool) -> None:
    """The plain baseline: the recommend app (or the trivial one) in this one process, uvicorn, no Ray."""
    import torch
    import uvicorn

    from musicray.serving import RecommendService, recommend_api

    torch.set_num_threads(1)  # as a Serve replica on CPU
    app = trivial_api() if trivial else recommend_api(RecommendService(root))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def bench_plain(args, bodies, levels, trivial: bool = False) -> list[LoadResult]:
    from musicray.serving import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.serve", "--plain-server", "--root", args.root,
                               "--port", str(port), *(["--trivial"] if trivial else [])])
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        return run_load("plain-trivial" if trivial else "plain-fastapi", base, bodies, levels, args)
    finally:
        server.terminate()
        server.wait(timeout=30)


def bench_serve(args, bodies, levels) -> list[LoadResult]:
    import ray
    from ray import serve

    from musicray.serving import free_port
    from ray_jobs.serve import INGRESS_ENV, generate_app, recommend_app

    for name, value in INGRESS_ENV.items():  # as `musicray serve --local` and the deployments run
        if args.serve_defaults:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base, results = f"http://127.0.0.1:{port}", []
    try:
        for batching in (True, False):
            serve.run(recommend_app({"root": args.root, "batching": batching, "replicas": 1, "num_cpus": 1}),
                      name="recommend", route_prefix="/", blocking=False)
            wait_healthy(base)
            results += run_load("serve-batched" if batching else "serve-unbatched", base, bodies, levels, args)
            serve.delete("recommend")
        serve.run(trivial_deployment().bind(), name="trivial", route_prefix="/", blocking=False)
        wait_healthy(base)
        results += run_load("serve-trivial", base, bodies, [TARGET_CONCURRENCY], args)
        serve.delete("trivial")
        if not args.no_generate:
            serve.run(generate_app({"root": args.root, "replicas": 1, "num_cpus": 1}), name="generate",
                      route_prefix="/generate", blocking=False)
            wait_healthy(f"{base}/generate")
            clips = generation_bodies(args.root, 200, args.generate_seconds)
            results += run_load(f"serve-generate-{args.generate_seconds:g}s", base, clips, [1, 4], args,
                                path="/generate")
            serve.delete("generate")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="workspace", help="workspace with a published snapshot (default ./workspace)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, TARGET_CONCURRENCY])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--max-requests", type=int, default=20000, help="stop a level after this many answers")
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--serve-defaults", action="store_true",
                        help="run Serve with Ray's default Python proxy and request path (no ray_jobs.serve.INGRESS_ENV)")
    parser.add_argument("--no-generate", action="store_true", help="skip the generation rows")
    parser.add_argument("--generate-seconds", type=float, default=2.0, help="length of each generated clip")
    parser.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trivial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from musicray import storage

    args.root = storage.normalize(args.root)
    if args.plain_server:
        serve_plain(args.root, args.port, args.trivial)
        return 0
    from musicray.serving import snapshot_pointer

    if snapshot_pointer(args.root) is None:
        print(f"no snapshot in {args.root}: run `musicray refresh` (or `make quickstart`) first", file=sys.stderr)
        return 2
    bodies = request_bodies(args.root, 2000, args.model)
    levels = sorted(set(args.concurrency))
    print(f"POST /recommend, model {args.model}, k=10, {args.seconds:g} s per level after {args.warmup:g} s warm-up\n")
    print("| server | clients | answers | rps | p50 ms | p95 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|---|")
    results = (bench_serve(args, bodies, levels) + bench_plain(args, bodies, levels)
               + bench_plain(args, bodies, [TARGET_CONCURRENCY], trivial=True))

    by = {(r.variant, r.concurrency): r for r in results}
    errors = sum(r.errors for r in results)
    print(f"\nerrors in all runs: {errors} (target 0)")
    if TARGET_CONCURRENCY in levels:
        batched, plain = by[("serve-batched", TARGET_CONCURRENCY)], by[("plain-fastapi", TARGET_CONCURRENCY)]
        unbatched = by[("serve-unbatched", TARGET_CONCURRENCY)]
        ratio, tail = batched.rps / plain.rps, batched.percentile(99) / plain.percentile(99)
        print(f"at {TARGET_CONCURRENCY} clients: serve-batched / plain-fastapi = {ratio:.2f} (target >= 1.0: "
              f"{'met' if ratio >= 1.0 else 'missed'}); p99 ratio {tail:.2f} (target <= 2: "
              f"{'met' if tail <= 2 else 'missed'}); serve-batched / serve-unbatched = "
              f"{batched.rps / unbatched.rps:.2f}")
        floor_serve, floor_plain = by[("serve-trivial", TARGET_CONCURRENCY)], by[("plain-trivial", TARGET_CONCURRENCY)]
        print(f"the floor, a trivial app without a model: Serve {floor_serve.rps:.0f} rps, plain uvicorn "
              f"{floor_plain.rps:.0f} rps (Serve / plain {floor_serve.rps / floor_plain.rps:.2f})")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
