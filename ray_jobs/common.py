"""What every job shares: joining the Ray cluster, sizing work to it, progress, locks and configs."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import ray
import ray.train
from ray.exceptions import ActorAlreadyExistsError

from musicray import storage, workspace


def init_ray() -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (as ``ray job submit`` sets it), else start a local one.

    The same command therefore runs on a laptop and on a cluster. A Ray instance already
    started in this process (a notebook, a test session) is reused as it is.
    """
    if not ray.is_initialized():
        ray.init(log_to_driver=os.environ.get("MUSICRAY_QUIET_WORKERS") is None)


def cluster_resources() -> tuple[int, int]:
    """(CPUs, GPUs) in the cluster right now."""
    resources = ray.cluster_resources()
    return int(resources.get("CPU", 1)), int(resources.get("GPU", 0))


@ray.remote(num_cpus=0)
class _Counter:
    def __init__(self):
        self.count = 0

    def add(self, amount: int) -> None:
        self.count += amount

    def reset(self) -> None:
        self.count = 0

    def value(self) -> int:
        return self.count


class Progress:
    """A count of work done that Ray tasks, actors and Ray Train's controller add to; a driver
    thread reads it to draw a progress bar.

    It pickles as its name: a copy finds the counter of that name in the running job, so a
    callback Tune kept with a search still counts after the search is restored in a new run.
    """

    def __init__(self, name: str):
        self.name = name
        self._counter = _Counter.options(name=self._actor_name(name), get_if_exists=True).remote()

    @staticmethod
    def _actor_name(name: str) -> str:
        return f"musicray-progress-{name}"

    def __getstate__(self) -> dict:
        return {"name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.name, self._counter = state["name"], None

    def _handle(self):
        if self._counter is None:
            try:
                self._counter = ray.get_actor(self._actor_name(self.name))
            except ValueError:  # no run is counting: nothing to tell
                return None
        return self._counter

    def add(self, amount: int = 1) -> None:
        if counter := self._handle():
            counter.add.remote(amount)  # fire and forget: progress never slows the work

    def reset(self) -> None:
        ray.get(self._handle().reset.remote())

    def value(self) -> int:
        return ray.get(self._handle().value.remote())


class EpochProgress(ray.train.UserCallback):
    """Adds one to a ``Progress`` for every epoch a Ray Train run reports."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def after_report(self, run_context, metrics, checkpoint):
        self.progress.add(1)


@ray.remote(num_cpus=0)
class _RunLock:
    """Held while it lives: Ray registers an actor name once per namespace, atomically."""

    def __init__(self, holder: str):
        self.holder = holder

    def who(self) -> str:
        return self.holder


@contextmanager
def exclusive(job: str, root: str, on_wait: Callable[[str], None] | None = None,
              poll_seconds: float = 2.0) -> Iterator[None]:
    """Run one ``job`` at a time on the workspace ``root`` across every driver on this Ray cluster.

    Why: two refreshes at once on a small cluster each start Ray Data actor pools and then wait
    for CPUs the other's actors hold, forever. A second run waits here instead, holding nothing.
    The lock is an actor owned by this driver, so a driver that dies releases it with it.
    """
    name = f"{job}-{hashlib.sha256(storage.normalize(root).encode()).hexdigest()[:16]}"
    holder = f"{job} on {root} (pid {os.getpid()})"
    while True:
        try:
            lock = _RunLock.options(name=name, namespace="musicray").remote(holder)
            break
        except ActorAlreadyExistsError:
            if on_wait is not None:
                on_wait(f"waiting for the {job} already running on {root}")
                on_wait = None  # say it once
            time.sleep(poll_seconds)
    try:
        yield
    finally:
        ray.kill(lock)


def parse_model_config(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``--set FIELD=VALUE`` arguments -> a model config dict; values parse as JSON where they can."""
    config = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            config[field] = json.loads(value)  # numbers, booleans, lists
        except json.JSONDecodeError:
            config[field] = value  # plain strings such as --set cell=rnn
    return config


def read_best_config(root: str, model: str) -> dict | None:
    """The best config a search wrote for ``model``: its training settings under ``train``, its
    model config fields under ``model_config``; None when no search has written one."""
    uri = workspace.best_config_file(root, model)
    if not storage.exists(uri):
        return None
    try:
        best = json.loads(storage.read_text(uri))
        if not isinstance(best.get("train"), dict) or not isinstance(best.get("model_config"), dict):
            raise ValueError("it lacks the 'train' and 'model_config' objects")
    except ValueError as error:  # a JSONDecodeError is a ValueError
        raise ValueError(f"best config {uri} is not a musicray tune result ({error}); fix or delete it, "
                         f"or pass --no-best-config") from None
    return best
