"""Training a recommender (lstm, rnn, dnn, autoencoder): next track from the session so far.

On the driver, the latest sessions of the log (``validation_fraction``) are held out and the
rest become padded session rows for Ray Data. On the workers, each step is the next-track
cross-entropy over the whole catalog (a sampled softmax with logQ correction above
``full_softmax_max_tracks``); after every epoch rank 0 ranks the whole catalog for every
validation position and reports MRR@20, which picks the best checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import ray
import torch
from torch import nn

from models import build
from models.losses import NegativeSampler, NextTrackObjective
from models.modules import fit_standardizers
from musicray.content import LATEST, TrackCatalog
from musicray.metrics import evaluate
from musicray.scoring import ModelScorer
from musicray.sessions import load_log, make_examples, session_arrays, split_by_time
from ray_jobs.common import init_ray
from ray_jobs.training import Prepared, Settings, shuffled_batches

SELECTION_METRIC = "val_MRR@20"


@dataclass
class RecommenderSettings(Settings):
    # On small logs the raw weights swing between epochs (validation MRR@20 +-0.02 on the demo);
    # their average is steadier and, on the demo's validation split, ~0.03 better.
    ema_decay: float = 0.98
    full_softmax_max_tracks: int = 200_000  # above this, sampled softmax with logQ correction
    negatives: int = 2048
    # The content vector ends with the audio encoder's embeddings once an encoder is trained
    # (its LATEST run); False trains on the summary statistics alone.
    audio_embeddings: bool = True


class RecommenderTask:
    metric, mode = SELECTION_METRIC, "max"

    def __init__(self, model: str, model_config: dict, settings: RecommenderSettings, shared: ray.ObjectRef,
                 sessions: str, audio_run: str | None):
        self.model, self.model_config, self.settings = model, model_config, settings
        self.shared, self.sessions = shared, sessions  # the catalog's content, vocabulary, held-out sessions
        self.audio_run = audio_run  # the audio encoder run whose embeddings end the content vectors

    def with_config(self, train: dict, model: dict) -> "RecommenderTask":
        return RecommenderTask(self.model, {**self.model_config, **model}, replace(self.settings, **train),
                               self.shared, self.sessions, self.audio_run)

    def setup(self, rank: int, device: torch.device) -> None:
        shared = ray.get(self.shared)
        self.catalog = TrackCatalog(shared["track_ids"], shared["content"])
        self.track_vocabulary = shared["vocabulary"]
        self.content, self.ids = shared["content"].to(device), shared["ids"].to(device)
        big = len(self.content) > self.settings.full_softmax_max_tracks
        self.sampler = NegativeSampler(shared["play_counts"], self.settings.negatives) if big else None
        self.validation = make_examples(shared["validation"], shared["track_ids"]) if rank == 0 else None

    def build(self) -> nn.Module:
        model = build(self.model, **self.model_config)
        fit_standardizers(model, self.catalog.content)
        return model

    def objective(self, model: nn.Module) -> nn.Module:
        return NextTrackObjective(model)

    def batches(self, shard, epoch: int, rank: int, device: torch.device):
        settings = self.settings
        for batch in shuffled_batches(shard, settings, epoch, device=device):
            negatives, log_q = self.sampler.sample(device) if self.sampler else (None, None)
            yield batch["items"], batch["hours"], batch["weekdays"], self.content, self.ids, negatives, log_q

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        scorer = ModelScorer(self.model, model, self.catalog, self.track_vocabulary, device)
        return {f"val_{k}": v for k, v in evaluate(scorer, self.validation)["all"].items()}

    def vocabulary(self) -> list[str]:
        return self.track_vocabulary

    def checkpoint_extra(self) -> dict:
        return {"sessions": self.sessions, "audio_run": self.audio_run}


TASK, SETTINGS = RecommenderTask, RecommenderSettings  # what ray_jobs.tasks looks up by model name


def prepare(model: str, root: str, sessions: str | None, settings: RecommenderSettings,
            model_config: dict | None) -> Prepared:
    """Features + listening log -> the task every worker runs and the training sessions as rows."""
    if not sessions:
        raise ValueError(f"a listening log (--sessions) is required to train {model!r}")
    catalog = TrackCatalog.from_workspace(root, audio_run=LATEST if settings.audio_embeddings else None)
    log = load_log(sessions)
    known = log["track_id"].isin(catalog.index.keys())
    train_log, validation = split_by_time(log[known], settings.validation_fraction)
    arrays = session_arrays(train_log, catalog.index)
    if len(arrays["items"]) == 0:
        raise ValueError(f"listening log {sessions} has no session of two or more known tracks to learn from")
    vocabulary = sorted(set(train_log["track_id"]))  # tracks played in training: the ID-embedding rows
    play_counts = np.bincount(train_log["track_id"].map(catalog.index), minlength=len(catalog))
    shared = {"content": catalog.content, "ids": catalog.vocabulary_ids(vocabulary),
              "play_counts": torch.from_numpy(play_counts), "track_ids": catalog.track_ids,
              "vocabulary": vocabulary, "validation": validation}
    # The fields the data decides: feature width and vocabulary size.
    full_config = {**(model_config or {}), "content_dim": catalog.content.shape[1], "n_ids": len(vocabulary)}
    init_ray()  # after the checks above: a bad input fails before Ray starts
    task = RecommenderTask(model, full_config, settings, ray.put(shared), sessions, catalog.audio_run)
    rows = pd.DataFrame({k: list(v) for k, v in arrays.items()})
    return Prepared(task, ray.data.from_pandas(rows), {"dropped_plays": int((~known).sum())})


def summary(result) -> list[str]:
    """The lines ``musicray train`` prints for a finished run."""
    best, lines = result.best, []
    if result.info.get("dropped_plays"):
        lines.append(f"{result.model}: {result.info['dropped_plays']} log rows name tracks without features; "
                     f"they were left out")
    lines.append(f"{result.model} {result.run_id}: best epoch {best['epoch']} of {len(result.history)}, "
                 f"val MRR@20 {best[SELECTION_METRIC]:.4f}, HR@20 {best['val_HR@20']:.4f}")
    return lines
