"""Each model type's training task for the engine in ``ray_jobs/training.py``, by model name.

``prepare`` does the driver's part once (read the data, build the shared inputs, make the
Ray Data rows); the ``Prepared`` task then trains as one run (``musicray train``) or as every
trial of a search (``musicray tune``, through ``task.with_config``).
"""

from __future__ import annotations

from models import ENCODERS, GENERATORS, RECOMMENDERS, TAGGERS, model_class
from ray_jobs.tasks import audio, generator, recommender, tagger
from ray_jobs.training import Prepared, Settings


def _task_module(model: str):
    model_class(model)  # an unknown name fails here, before any work
    return generator if model in GENERATORS else tagger if model in TAGGERS else audio if model in ENCODERS else recommender


def settings_class(model: str) -> type[Settings]:
    return _task_module(model).SETTINGS


def metric(model: str) -> tuple[str, str]:
    """The validation metric a model's runs select their best checkpoint on, and its direction."""
    task = _task_module(model).TASK
    return task.metric, task.mode


def prepare(model: str, root: str, *, sessions: str | None = None, settings: Settings | None = None,
            model_config: dict | None = None, run_uri: str | None = None, progress=print) -> Prepared:
    """The task and training rows of ``model`` on the workspace ``root``; ``run_uri`` names the
    run that will train (a resumed generator run keeps its codebook), None for a search."""
    settings = settings or settings_class(model)()
    if model in RECOMMENDERS:
        return recommender.prepare(model, root, sessions, settings, model_config)
    if model in TAGGERS:
        return tagger.prepare(root, settings, model_config, progress)
    if model in ENCODERS:
        return audio.prepare(root, sessions, settings, model_config, progress)
    return generator.prepare(root, settings, model_config, run_uri, progress)


def summary(result) -> list[str]:
    """What ``musicray train`` prints for a finished run of any model."""
    return _task_module(result.model).summary(result)
