"""Training the audio encoder on chunks of the catalog's log-mel crops.

On the driver: the tracks are split by ``musicray.splits.train_validation_test`` (test tracks are
never read), the per-band statistics are fitted on a sample of training crops, the catalog's
labels and, with a listening log, each played track's co-listening vector
(``musicray.colistening``) become per-track targets. Ray Data reads the training tracks' crops
from the features table once and keeps them in the object store. Each epoch every training track
gives two random ``chunk_frames`` chunks (the contrastive pair; both also learn the track's
targets); after every epoch rank 0 scores fixed chunks of the validation tracks: ``val_loss``
(the same weighted sum) and its parts.

When the run is published its encoder embeds every track of the catalog
(``ray_jobs.extract.embed_audio``) before ``LATEST`` names it, so a recommender trained next finds
every embedding it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import ray
import torch
from torch import nn

from models import build
from models.audio_encoder import AudioEncoder, AudioObjective
from musicray import storage, workspace
from musicray.audio_embeddings import MODEL_NAME
from musicray.catalog import track_labels
from musicray.colistening import colistening_vectors
from musicray.generation import track_logmels, workspace_layout
from musicray.schemas import parquet_files, read_features
from musicray.sessions import load_log
from musicray.splits import train_validation_test
from ray_jobs.common import init_ray
from ray_jobs.training import Prepared, Settings, shuffled_batches

SELECTION_METRIC = "val_loss"


@dataclass
class AudioSettings(Settings):
    epochs: int = 10
    batch_size: int = 32  # tracks per step (two chunks each)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    collab_dim: int = 32  # size of the co-listening vectors the encoder learns to predict
    colistening_window: int = 3  # plays apart that count as "played near each other"
    statistics_tracks: int = 256  # training tracks whose crops fit the per-band statistics
    validation_tracks: int = 256  # validation tracks scored after every epoch


class AudioTask:
    model, metric, mode = MODEL_NAME, SELECTION_METRIC, "min"

    def __init__(self, model_config: dict, statistics: ray.ObjectRef, validation: ray.ObjectRef,
                 settings: AudioSettings, extra: dict):
        self.model_config, self.settings, self.extra = model_config, settings, extra
        self.statistics_ref = statistics  # the per-band mean and deviation every rank starts from
        self.validation_ref = validation  # fixed chunks and targets of the validation tracks

    def with_config(self, train: dict, model: dict) -> "AudioTask":
        fixed = sorted(set(model) & {"n_mels", "collab_dim", "label_classes"})
        if fixed:
            raise ValueError(f"audio encoder config field(s) {fixed} come from the data; they cannot vary")
        return AudioTask({**self.model_config, **model}, self.statistics_ref, self.validation_ref,
                         replace(self.settings, **train), self.extra)

    def setup(self, rank: int, device: torch.device) -> None:
        self.validation = ray.get(self.validation_ref) if rank == 0 else None

    def build(self) -> nn.Module:
        model = build(MODEL_NAME, **self.model_config)
        mean, std = ray.get(self.statistics_ref)
        model.mel_mean.copy_(mean)
        model.mel_std.copy_(std)
        return model

    def objective(self, model: nn.Module) -> nn.Module:
        return AudioObjective(model)

    def batches(self, shard, epoch: int, rank: int, device: torch.device):
        settings, n_mels = self.settings, self.model_config["n_mels"]
        chunk = self.model_config.get("chunk_frames", AudioEncoder.Config.chunk_frames)
        rng = np.random.default_rng([settings.seed, epoch, rank])  # the same chunks on a re-run
        for batch in shuffled_batches(shard, settings, epoch):
            crops = [row.reshape(n_mels, -1) for row in batch["logmel"]]
            first = random_chunks(crops, batch["length"], chunk, rng)
            second = random_chunks(crops, batch["length"], chunk, rng)
            yield (first.to(device), second.to(device), torch.tensor(batch["collab"], device=device),
                   torch.tensor(batch["labels"], device=device))

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return validation_metrics(model, self.validation, device)

    def vocabulary(self) -> list[str]:
        return []  # no id embeddings; the label vocabularies are in config.json ("labels")

    def checkpoint_extra(self) -> dict:
        return self.extra

    def on_publish(self, root: str, run_id: str) -> None:
        from ray_jobs.extract import embed_audio  # the extract job's pipeline, imported when publishing

        embed_audio(root, run_id, gpu=self.settings.gpu)


TASK, SETTINGS = AudioTask, AudioSettings  # what ray_jobs.tasks looks up by model name


def random_chunks(crops: list[np.ndarray], lengths: np.ndarray, chunk: int, rng: np.random.Generator) -> torch.Tensor:
    """One random ``chunk``-frame window of each crop's real frames (a short crop is repeated)."""
    out = np.empty((len(crops), crops[0].shape[0], chunk), np.float32)
    for i, (crop, length) in enumerate(zip(crops, lengths)):
        real = crop[:, : max(int(length), 1)]
        if real.shape[1] < chunk:
            real = np.tile(real, (1, -(-chunk // real.shape[1])))
        start = int(rng.integers(0, real.shape[1] - chunk + 1))
        out[i] = real[:, start: start + chunk]
    return torch.from_numpy(out)


def validation_metrics(model: AudioEncoder, rows: dict, device, batch_size: int = 64) -> dict[str, float]:
    """The objective's parts on the validation tracks' fixed chunks, averaged over batches."""
    model.eval()
    objective, totals, batches = AudioObjective(model), {}, 0
    for start in range(0, len(rows["first"]), batch_size):
        part = {k: torch.tensor(v[start: start + batch_size], device=device) for k, v in rows.items()}
        for name, value in objective.losses(part["first"], part["second"], part["collab"], part["labels"]).items():
            totals[name] = totals.get(name, 0.0) + float(value)
        batches += 1
    model.train()
    metrics = {f"val_{name}": total / max(batches, 1) for name, total in totals.items()}
    metrics[SELECTION_METRIC] = sum(metrics.values())
    return metrics


# ---------------------------------------------------------------------------------------------
# Ray Data: features rows -> training rows


def training_rows(batch: pa.Table, n_mels: int, tracks: dict[str, tuple[int, int]], collab: np.ndarray,
                  labels: np.ndarray) -> dict[str, np.ndarray]:
    """Feature rows -> ``logmel`` (float16, flat), ``length``, ``collab`` and ``labels`` of the
    training tracks (track_id -> (extracted_at in µs, target row)), each from its current row."""
    ids = batch.column("track_id").to_pylist()
    stamps = batch.column("extracted_at").cast(pa.int64()).to_pylist()
    keep = [i for i, (t, s) in enumerate(zip(ids, stamps)) if t in tracks and tracks[t][0] == s]
    batch = batch.take(keep)
    rows = np.asarray([tracks[ids[i]][1] for i in keep], dtype=np.int64)
    n = batch.num_rows
    flat = batch.column("logmel").combine_chunks().flatten().to_numpy(zero_copy_only=False) if n else np.zeros(0)
    return {"logmel": flat.astype(np.float16).reshape(n, -1),
            "length": np.asarray(batch.column("crop_frames").to_pylist(), dtype=np.int64).reshape(n),
            "collab": collab[rows].reshape(n, collab.shape[1]), "labels": labels[rows].reshape(n, labels.shape[1])}


def training_dataset(root: str, n_mels: int, tracks: dict, collab: np.ndarray, labels: np.ndarray) -> ray.data.Dataset:
    files = parquet_files(workspace.features_dir(root))
    fs, _ = storage.resolve(files[0])
    source = ray.data.read_parquet([storage.resolve(f)[1] for f in files], filesystem=fs).select_columns(
        ["track_id", "extracted_at", "crop_frames", "logmel"])
    return source.map_batches(training_rows, batch_format="pyarrow", batch_size=16,
                              fn_kwargs={"n_mels": n_mels, "tracks": tracks, "collab": collab,
                                         "labels": labels}).materialize()


# ---------------------------------------------------------------------------------------------
# On the driver


def prepare(root: str, sessions: str | None, settings: AudioSettings, model_config: dict | None,
            progress=print) -> Prepared:
    """Split the tracks, fit the statistics, make the targets, and read the training crops with Ray Data."""
    model_config = dict(model_config or {})
    fixed = sorted(set(model_config) & {"n_mels", "collab_dim", "label_classes"})
    if fixed:
        raise ValueError(f"audio encoder config field(s) {fixed} come from the workspace and cannot be set")
    index = read_features(root, columns=["track_id", "extracted_at"])
    ids = index.column("track_id").to_pylist()
    if len(ids) < 3:
        raise ValueError(f"the workspace {root} has {len(ids)} track(s) with features; the audio encoder needs "
                         f"at least 3 (to train, validate and test on): run `musicray extract` first")
    train_ids, validation_ids, _ = train_validation_test(ids)
    learned = [*train_ids, *validation_ids]  # test tracks give no crop and no target to training

    labels_by_track = track_labels(root)
    classes = sorted({labels_by_track[t] for t in learned if t in labels_by_track})
    supervised = len(classes) >= 2  # one label value teaches nothing
    label_of = {c: i for i, c in enumerate(classes)}
    labels = np.full((len(ids) + 1, 1 if supervised else 0), -1, dtype=np.int64)  # last row: no target
    collab = np.zeros((len(ids) + 1, 0), dtype=np.float32)
    if sessions:
        vectors = colistening_vectors(load_log(sessions), ids, dim=settings.collab_dim,
                                      window=settings.colistening_window, seed=settings.seed)
        collab = np.concatenate([vectors, np.zeros((1, vectors.shape[1]), np.float32)])
    position = {t: i for i, t in enumerate(ids)}
    for t in learned:
        if supervised and t in labels_by_track:
            labels[position[t], 0] = label_of[labels_by_track[t]]
    test = set(ids) - set(learned)
    collab[[position[t] for t in test]] = 0.0

    layout = workspace_layout(root)
    config = {**model_config, "n_mels": layout["n_mels"], "collab_dim": collab.shape[1],
              "label_classes": [len(classes)] if supervised else []}
    chunk = config.get("chunk_frames", AudioEncoder.Config.chunk_frames)
    rng = np.random.default_rng(settings.seed)
    sample = sorted(rng.choice(train_ids, size=min(settings.statistics_tracks, len(train_ids)), replace=False))
    frames = np.concatenate([m for m in track_logmels(root, sample, layout["n_mels"]).values()], axis=1)
    statistics = (torch.from_numpy(frames.mean(axis=1)).float(),
                  torch.from_numpy(frames.std(axis=1)).float().clamp(min=1e-3))
    validation = validation_rows(root, validation_ids[: settings.validation_tracks], position, collab, labels,
                                 layout["n_mels"], chunk, settings.seed)

    stamps = dict(zip(ids, index.column("extracted_at").cast(pa.int64()).to_pylist()))
    tracks = {t: (stamps[t], position[t]) for t in train_ids}
    played = int((np.abs(collab).sum(1) > 0).sum())
    progress(f"audio: {len(train_ids)} training, {len(validation_ids)} validation tracks; "
             f"{len(classes) if supervised else 0} label classes, {played} tracks with a co-listening vector")
    init_ray()
    dataset = training_dataset(root, layout["n_mels"], tracks, collab, labels)
    extra = {"sessions": sessions, "labels": {"label": classes} if supervised else {}}
    task = AudioTask(config, ray.put(statistics), ray.put(validation), settings, extra)
    return Prepared(task, dataset, {"train_tracks": len(train_ids), "validation_tracks": len(validation_ids),
                                    "label_classes": len(classes) if supervised else 0, "colistening_tracks": played})


def validation_rows(root: str, track_ids: list[str], position: dict[str, int], collab: np.ndarray,
                    labels: np.ndarray, n_mels: int, chunk: int, seed: int) -> dict[str, np.ndarray]:
    """Two fixed chunks and the targets of each validation track, cut on the driver (a few hundred tracks)."""
    logmels = track_logmels(root, track_ids, n_mels)
    chosen = [t for t in track_ids if t in logmels]
    rng = np.random.default_rng([seed, 1])
    crops = [logmels[t] for t in chosen]
    lengths = np.asarray([c.shape[1] for c in crops])
    rows = [position[t] for t in chosen]
    return {"first": random_chunks(crops, lengths, chunk, rng).numpy(),
            "second": random_chunks(crops, lengths, chunk, rng).numpy(),
            "collab": collab[rows], "labels": labels[rows]}


def summary(result) -> list[str]:
    best, info = result.best, result.info
    parts = ", ".join(f"{k[4:]} {v:.3f}" for k, v in best.items() if k.startswith("val_") and k != SELECTION_METRIC)
    return [f"audio {result.run_id}: best epoch {best['epoch']} of {len(result.history)}, val loss "
            f"{best[SELECTION_METRIC]:.3f} ({parts}); {info['train_tracks']} training tracks, "
            f"{info['label_classes']} label classes, {info['colistening_tracks']} with co-listening vectors; "
            f"every track embedded"]
