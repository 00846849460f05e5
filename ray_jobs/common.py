"""What every job shares: joining the Ray cluster and sizing work to it."""

from __future__ import annotations

import os

import ray


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
