"""Faults that tests inject into training runs, through the engine's worker hooks."""

from __future__ import annotations

import os
import sys

import ray.cloudpickle

# The hooks travel to Ray Train's workers by value: the workers need not import the tests.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class CrashAfterEpoch:
    """Kills the worker process right after it reports ``epoch``, without cleaning up, as a
    machine lost mid-run would (before Ray Train's controller may have registered that checkpoint)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_epoch(self, epoch: int, rank: int) -> None:
        if epoch == self.epoch:
            os._exit(1)
