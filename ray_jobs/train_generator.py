"""Train the LSTM music generator with Ray Train on crops of the catalog's log-mel features.

    musicray train --model generator --root ROOT [--workers N] [--gpu] [--epochs E] [--run-name NAME]
                                             [--crop-frames F] [--seed N] [--set hidden=512 ...]

On the driver: the tracks are split by a stable hash of their id (``musicray.generation.split_tracks``,
10% held out, the same split evaluation uses), and the frame codebook is fitted by k-means on a
sample of training frames (deterministic for ``--seed``). Ray Data then reads the features table,
turns the training tracks' log-mels into codebook tokens (``tokenize_batch``, in parallel) and feeds
them to the workers; each epoch draws ``crops_per_track`` random ``crop_frames``-long windows per
track, shuffled so that a batch mixes tracks, each conditioned on the sound of another random
``sound_frames`` window of its track. Workers train next-token cross-entropy with DDP; after every
epoch rank 0 scores (up to ``validation_tracks``) held-out tracks whole (``val_loss``, nats per
frame) and writes a checkpoint.

Checkpoints live under ``<root>/models/generator/<run>/`` (``state_dict.pt`` with the codebook,
``config.json``, ``vocab.json`` = the style labels, ``optimizer.pt``); the lowest ``val_loss`` is
copied to ``<run>/model/`` and ``<root>/models/generator/LATEST`` names the run last. Re-running
with the same ``--run-name`` resumes from the run's newest checkpoint (same codebook, the epoch
counter continuing); a failed worker is retried up to ``--max-failures`` times.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from models import build
from models.lstm_generator import PAD, LSTMGenerator, NextTokenObjective, fit_codebook, nearest
from musicray import storage, workspace
from musicray.checkpoints import MODEL_FILES, newest_checkpoint, read_model_files, restore_training, write_training_checkpoint
from musicray.generation import MODEL_NAME, held_out_score, split_tracks, track_labels, track_logmels, workspace_layout
from musicray.schemas import parquet_files, read_features
from ray_jobs.common import init_ray, publish_best, run_config

SELECTION_METRIC = "val_loss"
CHECKPOINT_FILES = {*MODEL_FILES, "optimizer.pt"}


@dataclass
class GeneratorSettings:
    epochs: int = 10
    batch_size: int = 16  # crop windows per optimiser step (per worker)
    lr: float = 2e-3
    weight_decay: float = 1e-5
    workers: int = 1
    gpu: bool = False
    max_failures: int = 1
    # Training window: ~12 s. Generation runs seed + continuation (5 + 10 s by default) through
    # the LSTM; windows much shorter than that leave its state untrained past their length.
    crop_frames: int = 512
    crops_per_track: int = 2  # windows drawn per training track and epoch
    sound_frames: int = 216  # the other window of the track whose mean frame conditions a crop (~5 s, a seed)
    validation_fraction: float = 0.1
    validation_tracks: int = 256  # held-out tracks scored after every epoch (the first by hash score)
    codebook_tracks: int = 256  # training tracks sampled for the codebook fit
    codebook_frames: int = 50_000  # frames of them the k-means sees
    codebook_iterations: int = 15
    seed: int = 0


@dataclass
class GeneratorTrainResult:
    run_id: str
    best: dict  # metrics of the epoch with the lowest val_loss
    history: list[dict]  # every epoch, resumed ones included
    train_tracks: int
    validation_tracks: int
    labels: list[str]


# ---------------------------------------------------------------------------------------------
# Ray Data: features rows -> token rows


def tokenize_batch(batch: pa.Table, codebook: np.ndarray, mean: np.ndarray, std: np.ndarray, n_mels: int,
                   tracks: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Features rows -> ``tokens`` (rows, n_frames) int16 padded with PAD, ``length``, ``label``.

    Keeps only the rows of ``tracks`` (track_id -> (extracted_at in µs, label row)) with that
    ``extracted_at``: the training tracks, each from its newest row as ``read_features`` picks it.
    """
    torch.set_num_threads(1)
    ids = batch.column("track_id").to_pylist()
    stamps = batch.column("extracted_at").cast(pa.int64()).to_pylist()
    keep = [i for i, (t, s) in enumerate(zip(ids, stamps)) if t in tracks and tracks[t][0] == s]
    n_frames = batch.schema.field("logmel").type.list_size // n_mels
    batch = batch.take(keep)
    n = batch.num_rows
    flat = batch.column("logmel").combine_chunks().flatten().to_numpy(zero_copy_only=False) if n else np.zeros(0)
    logmel = torch.from_numpy(flat.astype(np.float32).reshape(n, n_mels, n_frames))
    lengths = np.asarray(batch.column("crop_frames").to_pylist(), dtype=np.int64).reshape(n)
    frames = (logmel.transpose(1, 2) - torch.tensor(mean)) / torch.tensor(std)  # copies: arguments arrive read-only
    tokens = nearest(frames, torch.tensor(codebook)).numpy().astype(np.int16)
    tokens[np.arange(tokens.shape[1])[None, :] >= lengths[:, None]] = PAD  # frames past the real audio
    return {"tokens": tokens, "length": lengths,
            "label": np.asarray([tracks[ids[i]][1] for i in keep], dtype=np.int64)}


def repeat_rows(batch: dict[str, np.ndarray], copies: int) -> dict[str, np.ndarray]:
    return {k: np.repeat(v, copies, axis=0) for k, v in batch.items()}


def training_dataset(root: str, model: LSTMGenerator, tracks: dict[str, tuple[int, int]],
                     copies: int) -> ray.data.Dataset:
    """Token rows of the training tracks, each ``copies`` times (one random window per row and
    epoch), read and tokenised once in parallel, then kept in the object store (2 bytes per
    frame) so that epochs do not decode Parquet again."""
    files = parquet_files(workspace.features_dir(root))
    fs, _ = storage.resolve(files[0])
    source = ray.data.read_parquet([storage.resolve(f)[1] for f in files], filesystem=fs).select_columns(
        ["track_id", "extracted_at", "crop_frames", "logmel"])
    return source.map_batches(
        tokenize_batch, batch_format="pyarrow", batch_size=16,
        fn_kwargs={"codebook": model.codebook.numpy(), "mean": model.mel_mean.numpy(), "std": model.mel_std.numpy(),
                   "n_mels": model.config.n_mels, "tracks": tracks},
    ).map_batches(repeat_rows, fn_kwargs={"copies": copies}, batch_format="numpy").materialize()


def validation_rows(root: str, model: LSTMGenerator, held_out: list[str], label_rows: dict[str, int],
                    limit: int) -> dict[str, np.ndarray]:
    """Tokens of (up to ``limit``) held-out tracks, tokenised on the driver: a few hundred tracks
    at most, so they travel to rank 0 in the object store rather than through a second dataset."""
    chosen = sorted(held_out, key=held_out_score)[:limit]
    logmels = track_logmels(root, chosen, model.config.n_mels)
    chosen = [t for t in chosen if t in logmels]
    longest = max(logmels[t].shape[1] for t in chosen)
    tokens = np.full((len(chosen), longest), PAD, dtype=np.int64)
    for i, track_id in enumerate(chosen):
        tokens[i, : logmels[track_id].shape[1]] = model.tokenize(torch.from_numpy(logmels[track_id])).numpy()
    return {"tokens": tokens, "label": np.asarray([label_rows[t] for t in chosen], dtype=np.int64)}


# ---------------------------------------------------------------------------------------------
# On every worker


def random_windows(tokens: np.ndarray, lengths: np.ndarray, window: int, rng: np.random.Generator) -> torch.Tensor:
    """A random window of ``window`` tokens per row; a track shorter than that is taken whole and padded."""
    windows = np.full((len(tokens), window), PAD, dtype=np.int64)
    for i, (row, length) in enumerate(zip(tokens, lengths)):
        start = int(rng.integers(0, length - window + 1)) if length > window else 0
        piece = row[start: start + min(window, length)]
        windows[i, : len(piece)] = piece
    return torch.from_numpy(windows)


@torch.no_grad()
def validation_loss(model: LSTMGenerator, rows: dict[str, np.ndarray], sound_frames: int, device,
                    batch_size: int = 8) -> float:
    """Cross-entropy per frame over the held-out tracks, each scored whole from its first frame,
    its opening ``sound_frames`` standing for the sound (as a seed does at generation)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows["tokens"]), batch_size):
        # torch.tensor copies: arrays from the object store are read-only.
        tokens = torch.tensor(rows["tokens"][start: start + batch_size], dtype=torch.long, device=device)
        labels = torch.tensor(rows["label"][start: start + batch_size], device=device)
        frames = int((tokens[:, 1:] != PAD).sum())
        total += model.loss(tokens, labels, tokens[:, :sound_frames]).item() * frames
        count += frames
    model.train()
    return total / max(count, 1)


def train_loop(config: dict) -> None:
    settings: GeneratorSettings = config["settings"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(1)  # one worker per core; small LSTMs get ~8x slower when threads contend
    torch.manual_seed(settings.seed + rank)

    model: LSTMGenerator = build(MODEL_NAME, **config["model_config"])
    model.load_state_dict(ray.get(config["initial_state"]))  # codebook + identical starting weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start_epoch, history = 0, []
    resume_from = newest_checkpoint(config["run_uri"], CHECKPOINT_FILES)
    if resume_from:  # resuming: same run name, or an automatic retry after a failure
        start_epoch, history = restore_training(resume_from, model, optimizer)

    objective = ray.train.torch.prepare_model(NextTokenObjective(model))
    shard = ray.train.get_dataset_shard("train")
    validation = ray.get(config["validation"]) if rank == 0 else None

    for epoch in range(start_epoch, settings.epochs):
        rng = np.random.default_rng([settings.seed, epoch, rank])  # the same windows on a re-run
        objective.train()
        started, total, steps = time.perf_counter(), 0.0, 0
        # Rows are tracks, each ``crops_per_track`` times; the shuffle buffer spreads a track's
        # copies over different steps (a batch of one track's windows learns ~2x slower).
        for batch in shard.iter_batches(batch_size=settings.batch_size, batch_format="numpy",
                                        local_shuffle_buffer_size=16 * settings.batch_size,
                                        local_shuffle_seed=settings.seed + epoch):
            # A crop (inputs + shifted targets), and another window of the same track for its sound.
            tokens = random_windows(batch["tokens"], batch["length"], settings.crop_frames + 1, rng).to(device)
            sound = random_windows(batch["tokens"], batch["length"], settings.sound_frames, rng).to(device)
            labels = torch.tensor(batch["label"], device=device)
            loss = objective(tokens, labels, sound)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        metrics = {"epoch": epoch, "train_loss": total / max(steps, 1), "epoch_seconds": time.perf_counter() - started}
        if rank != 0:
            ray.train.report(metrics)
        else:
            metrics[SELECTION_METRIC] = validation_loss(model, validation, settings.sound_frames, device)
            history.append(metrics)
            with tempfile.TemporaryDirectory() as directory:
                # vocab.json holds the style labels; tensors load on CPU later (map_location).
                write_training_checkpoint(directory, MODEL_NAME, model, model.config.labels, optimizer,
                                          extra={"epoch": epoch, "history": history, "metrics": metrics,
                                                 "validation_fraction": settings.validation_fraction})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        if config.get("crash_after_epoch") == epoch:
            os._exit(1)  # fault injection for tests: a worker dies without cleaning up


# ---------------------------------------------------------------------------------------------
# On the driver


def codebook_frames(root: str, train_ids: list[str], settings: GeneratorSettings, n_mels: int) -> torch.Tensor:
    """A deterministic sample of real log-mel frames of (up to ``codebook_tracks``) training tracks."""
    rng = np.random.default_rng(settings.seed)
    chosen = sorted(rng.choice(train_ids, size=min(settings.codebook_tracks, len(train_ids)), replace=False))
    logmels = track_logmels(root, chosen, n_mels)
    frames = np.concatenate([logmels[t].T for t in chosen if t in logmels])
    if len(frames) > settings.codebook_frames:
        frames = frames[np.sort(rng.choice(len(frames), settings.codebook_frames, replace=False))]
    return torch.from_numpy(frames)


def initial_model(root: str, run_uri: str | None, train_ids: list[str], labels: list[str],
                  settings: GeneratorSettings, model_config: dict) -> LSTMGenerator:
    """A resumed run's model as its newest checkpoint holds it; else a fresh one with a fitted codebook."""
    resume_from = newest_checkpoint(run_uri, CHECKPOINT_FILES) if run_uri else None
    if resume_from:
        model, _, _ = read_model_files(resume_from)
        saved = asdict(model.config)
        changed = {k: v for k, v in model_config.items() if k in saved and saved[k] != v}
        if changed:
            raise ValueError(f"run {run_uri} was started with a different generator config "
                             f"({', '.join(f'{k}={saved[k]!r}' for k in changed)}); resume it without "
                             f"changing those fields, or start a new run name")
        return model
    layout = workspace_layout(root)
    torch.manual_seed(settings.seed)  # the same initial weights for the same seed
    model = build(MODEL_NAME, **{**model_config, "labels": labels, "n_mels": layout["n_mels"],
                                 "sample_rate": layout["sample_rate"], "hop_length": layout["hop_length"]})
    frames = codebook_frames(root, train_ids, settings, layout["n_mels"])
    if len(frames) < model.config.codebook_size:
        raise ValueError(f"the training tracks hold {len(frames)} log-mel frames, fewer than the "
                         f"{model.config.codebook_size} codebook entries: add tracks or --set codebook_size=...")
    fit_codebook(model, frames, seed=settings.seed, iterations=settings.codebook_iterations)
    return model


# Fields of the generator's config that come from the workspace or the fitted codebook.
WORKSPACE_FIELDS = ("labels", "n_mels", "sample_rate", "hop_length")
CODEBOOK_FIELDS = ("codebook_size", *WORKSPACE_FIELDS)


def with_config(model: LSTMGenerator, overrides: dict, seed: int) -> LSTMGenerator:
    """A fresh generator with ``model``'s codebook and framing and other fields of ``overrides``
    (a search trial's config): every trial of a search shares one codebook and one tokenised dataset."""
    fixed = sorted(set(overrides) & set(CODEBOOK_FIELDS))
    if fixed:
        raise ValueError(f"generator config field(s) {fixed} are fixed by the codebook and workspace; "
                         f"they cannot vary between trials")
    torch.manual_seed(seed)
    fresh: LSTMGenerator = build(MODEL_NAME, **{**asdict(model.config), **overrides})
    for name in ("codebook", "mel_mean", "mel_std"):
        getattr(fresh, name).copy_(getattr(model, name))
    return fresh


@dataclass
class GeneratorInputs:
    """What the driver prepares once for the generator's training: a run's or every trial's."""
    model: LSTMGenerator  # codebook fitted (or a resumed run's model)
    validation: dict[str, np.ndarray]  # tokens of the held-out tracks, scored by rank 0
    dataset: ray.data.Dataset  # token rows of the training tracks, materialized
    train_tracks: int
    validation_tracks: int


def prepare_generator(root: str, settings: GeneratorSettings, model_config: dict | None, run_uri: str | None,
                      progress=print) -> GeneratorInputs:
    """Split the tracks, fit the codebook (or take a resumed run's), tokenise the training tracks with Ray Data."""
    model_config = dict(model_config or {})
    for reserved in WORKSPACE_FIELDS:
        if reserved in model_config:
            raise ValueError(f"generator config field {reserved!r} comes from the workspace and cannot be set")
    index = read_features(root, columns=["track_id", "crop_frames", "extracted_at"])
    index = index.filter(pc.greater_equal(index.column("crop_frames"), 2))  # one frame predicts nothing
    if index.num_rows < 2:
        raise ValueError(f"the workspace {root} has {index.num_rows} track(s) with features; the generator needs "
                         f"at least 2 (one to train on, one to validate): run `musicray extract` first")
    ids = index.column("track_id").to_pylist()
    train_ids, held_out = split_tracks(ids, settings.validation_fraction)
    labels_by_track = track_labels(root)
    labels = sorted(set(labels_by_track.get(t) for t in ids) - {None})

    started = time.perf_counter()
    model = initial_model(root, run_uri, train_ids, labels, settings, model_config)
    progress(f"generator: codebook of {model.config.codebook_size} frame shapes ready in "
             f"{time.perf_counter() - started:.1f} s; {len(train_ids)} training, {len(held_out)} held-out tracks")
    label_index = {label: i + 1 for i, label in enumerate(model.config.labels)}
    label_rows = {t: label_index.get(labels_by_track.get(t), 0) for t in ids}
    training = set(train_ids)
    stamps = index.column("extracted_at").cast(pa.int64()).to_pylist()
    tracks = {t: (s, label_rows[t]) for t, s in zip(ids, stamps) if t in training}
    validation = validation_rows(root, model, held_out, label_rows, settings.validation_tracks)
    init_ray()
    dataset = training_dataset(root, model, tracks, settings.crops_per_track)
    return GeneratorInputs(model, validation, dataset, len(train_ids), len(held_out))


def make_trainer(model: LSTMGenerator, validation: ray.ObjectRef, dataset: ray.data.Dataset,
                 settings: GeneratorSettings, run_uri: str, run_config: ray.train.RunConfig,
                 scaling_config: ScalingConfig | None = None, crash_after_epoch: int | None = None) -> TorchTrainer:
    """One Ray Train run of the generator: ``run_train_generator`` fits one, every trial of a search another."""
    return TorchTrainer(
        train_loop,
        train_loop_config={"model_config": asdict(model.config), "initial_state": ray.put(model.state_dict()),
                           "validation": validation, "settings": settings, "run_uri": run_uri,
                           "crash_after_epoch": crash_after_epoch},
        scaling_config=scaling_config or ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpu),
        run_config=run_config,
        datasets={"train": dataset},
    )


def run_train_generator(root: str, *, settings: GeneratorSettings = GeneratorSettings(), run_id: str | None = None,
                        model_config: dict | None = None, crash_after_epoch: int | None = None,
                        progress=print, callbacks: list | None = None) -> GeneratorTrainResult:
    """Train the generator on the workspace's features; publish its best checkpoint and LATEST.
    ``callbacks`` are Ray Train callbacks (the quickstart's progress bar)."""
    root = storage.normalize(root)
    run_id = run_id or f"{MODEL_NAME}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    models_uri = workspace.models_dir(root, MODEL_NAME)
    run_uri = storage.join(models_uri, run_id)
    inputs = prepare_generator(root, settings, model_config, run_uri, progress)
    trainer = make_trainer(inputs.model, ray.put(inputs.validation), inputs.dataset, settings, run_uri,
                           run_config(models_uri, run_id, settings.max_failures, SELECTION_METRIC, "min",
                                      callbacks=callbacks),
                           crash_after_epoch=crash_after_epoch)
    best, history = publish_best(trainer.fit(), root, MODEL_NAME, run_id, SELECTION_METRIC, "min")
    return GeneratorTrainResult(run_id, best, history, inputs.train_tracks, inputs.validation_tracks,
                                list(inputs.model.config.labels))


def summary(result: GeneratorTrainResult) -> str:
    best = result.best
    return (f"generator {result.run_id}: best epoch {best['epoch']} of {len(result.history)}, "
            f"val loss {best[SELECTION_METRIC]:.3f} nats/frame; {result.train_tracks} training, "
            f"{result.validation_tracks} held-out tracks")
