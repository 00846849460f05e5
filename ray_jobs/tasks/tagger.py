"""Training the tagger: each track's content vector -> its values in the catalog's tag columns.

On the driver: the catalog's tag columns (``--tags``, ``label`` by default; ``musicray.tagging``
says which columns are categorical and which multi-label) and every track's content vector (the
summary statistics and, once an audio encoder is trained, the embeddings of the run LATEST names:
recorded in the checkpoint as ``audio_run``). The tracks are split by
``musicray.splits.train_validation_test`` (the audio encoder's split, so no test track is learned
from by either); each column's vocabulary comes from the training tracks. A catalog that gives
nothing to learn stops here with one line (``musicray.tagging.NothingToLearn``), before Ray starts.

Ray Data carries the training tracks' row numbers; the content and the targets travel once in
the object store. Each step is the objective of ``models/tagger.py`` (a track without a value in
a column is left out of that column's loss); after every epoch rank 0 scores the validation
tracks: the macro-F1 of the first tag column (``val_macro_F1``) picks the best checkpoint, and
every column's accuracy and macro-F1 are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import ray
import torch
from torch import nn

from models import build
from models.modules import fit_standardizers
from models.tagger import TaggerObjective
from musicray.catalog import read_catalog
from musicray.content import TrackCatalog
from musicray.splits import train_validation_test
from musicray.tagging import MODEL_NAME, NothingToLearn, tag_column, tag_metrics, tagged, targets, vocabulary
from ray_jobs.common import init_ray
from ray_jobs.training import Prepared, Settings, shuffled_batches

SELECTION_METRIC = "val_macro_F1"  # of the first tag column


@dataclass
class TaggerSettings(Settings):
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-3
    tags: tuple[str, ...] = ("label",)  # the catalog's tag columns; the first one selects checkpoints


class TaggerTask:
    model, metric, mode = MODEL_NAME, SELECTION_METRIC, "max"

    def __init__(self, model_config: dict, settings: TaggerSettings, shared: ray.ObjectRef, audio_run: str | None):
        self.model_config, self.settings = model_config, settings
        self.shared = shared  # content, targets, the training tracks' content for standardising, validation rows
        self.audio_run = audio_run

    def with_config(self, train: dict, model: dict) -> "TaggerTask":
        fixed = sorted(set(model) & {"content_dim", "tags"})
        if fixed:
            raise ValueError(f"tagger config field(s) {fixed} come from the data; they cannot vary")
        return TaggerTask({**self.model_config, **model}, replace(self.settings, **train), self.shared, self.audio_run)

    def setup(self, rank: int, device: torch.device) -> None:
        shared = ray.get(self.shared)
        self.content = shared["content"].to(device)
        self.targets = [t.to(device) for t in shared["targets"]]
        self.train_rows, self.validation_rows = shared["train_rows"], shared["validation_rows"]

    def build(self) -> nn.Module:
        model = build(MODEL_NAME, **self.model_config)
        fit_standardizers(model, self.content[self.train_rows].cpu())
        return model

    def objective(self, model: nn.Module) -> nn.Module:
        return TaggerObjective(model)

    def batches(self, shard, epoch: int, rank: int, device: torch.device):
        for batch in shuffled_batches(shard, self.settings, epoch, device=device):
            rows = batch["row"]
            yield self.content[rows], *(t[rows] for t in self.targets)

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        model.eval()
        rows = self.validation_rows
        probabilities = model.probabilities(self.content[rows])
        loss = float(TaggerObjective(model)(self.content[rows], *(t[rows] for t in self.targets)))
        model.train()
        metrics = {"val_loss": loss}
        for i, (head, p, target) in enumerate(zip(model.config.tags, probabilities, self.targets)):
            truth = target[rows].cpu().numpy()
            known = tagged(head["kind"], truth)
            scores = tag_metrics(head["kind"], truth[known], p.cpu().numpy()[known])
            metrics[f"val_{head['column']}_accuracy"] = scores["accuracy"]
            metrics[f"val_{head['column']}_macro_F1"] = scores["macro_F1"]
            if i == 0:
                metrics[SELECTION_METRIC] = scores["macro_F1"]
        return metrics

    def vocabulary(self) -> list[str]:
        return []  # no id embeddings; each tag column's values are in config.json ("tags")

    def checkpoint_extra(self) -> dict:
        return {"audio_run": self.audio_run, "tag_columns": [h["column"] for h in self.model_config["tags"]]}


TASK, SETTINGS = TaggerTask, TaggerSettings  # what ray_jobs.tasks looks up by model name


def prepare(root: str, settings: TaggerSettings, model_config: dict | None, progress=print) -> Prepared:
    """The catalog's tag columns and every track's content -> the task and the training tracks' rows."""
    model_config = dict(model_config or {})
    fixed = sorted(set(model_config) & {"content_dim", "tags"})
    if fixed:
        raise ValueError(f"tagger config field(s) {fixed} come from the workspace and cannot be set")
    columns = list(dict.fromkeys(settings.tags))
    if not columns:
        raise ValueError("--tags names no column")
    table = read_catalog(root)
    if table.num_rows == 0:
        raise FileNotFoundError(f"the workspace {root} has no catalog yet: run `musicray extract` first")
    tag_columns = [tag_column(table, name) for name in columns]  # a missing column: NothingToLearn

    catalog = TrackCatalog.from_workspace(root)  # the encoder run LATEST names, recorded as audio_run
    train_ids, validation_ids, _ = train_validation_test(catalog.track_ids)
    heads, arrays = [], []
    for column in tag_columns:
        values = vocabulary(column, train_ids)
        head_targets = targets(column, values, catalog.track_ids)
        heads.append({"column": column.name, "kind": column.kind, "values": values})
        arrays.append(head_targets)
    position = catalog.index
    train_rows = np.asarray([position[t] for t in train_ids], dtype=np.int64)
    validation_rows = np.asarray([position[t] for t in validation_ids], dtype=np.int64)
    first = heads[0]
    if not tagged(first["kind"], arrays[0][validation_rows]).any():
        raise NothingToLearn(f"nothing to validate on: none of the {len(validation_rows)} validation tracks has a "
                             f"known value in {first['column']!r}, the column that selects checkpoints; tag more "
                             f"tracks or name another column first in --tags")
    counts = {h["column"]: int(tagged(h["kind"], a[train_rows]).sum()) for h, a in zip(heads, arrays)}
    progress(f"tagger: {len(train_rows)} training, {len(validation_rows)} validation tracks; "
             + ", ".join(f"{h['column']} ({h['kind']}, {len(h['values'])} values, {counts[h['column']]} tagged "
                         f"training tracks)" for h in heads))

    shared = {"content": catalog.content, "targets": [torch.from_numpy(a) for a in arrays],
              "train_rows": torch.from_numpy(train_rows), "validation_rows": torch.from_numpy(validation_rows)}
    config = {**model_config, "content_dim": catalog.content.shape[1], "tags": heads}
    build(MODEL_NAME, **config)  # a bad --set field fails here, before Ray starts
    init_ray()
    # Only tracks tagged in some column train: an untagged track would add nothing to any loss.
    tagged_somewhere = np.zeros(len(catalog), dtype=bool)
    for head, head_targets in zip(heads, arrays):
        tagged_somewhere |= tagged(head["kind"], head_targets)
    useful = train_rows[tagged_somewhere[train_rows]]
    task = TaggerTask(config, settings, ray.put(shared), catalog.audio_run)
    return Prepared(task, ray.data.from_pandas(pd.DataFrame({"row": useful})),
                    {"train_tracks": len(useful), "validation_tracks": len(validation_rows), "heads": heads,
                     "audio_run": catalog.audio_run})


def summary(result) -> list[str]:
    """The line ``musicray train`` prints for a finished run."""
    best, info = result.best, result.info

    def score(name: str) -> str:
        value = best.get(name)
        return "n/a (no tagged validation track)" if value is None else f"{value:.3f}"

    columns = ", ".join(f"{h['column']} accuracy {score('val_' + h['column'] + '_accuracy')} macro-F1 "
                        f"{score('val_' + h['column'] + '_macro_F1')}" for h in info["heads"])
    content = f"audio run {info['audio_run']}" if info["audio_run"] else "summary statistics"
    return [f"tagger {result.run_id}: best epoch {best['epoch']} of {len(result.history)}, validation {columns}; "
            f"{info['train_tracks']} training tracks, content: {content}"]
