"""Training the LSTM music generator on crops of the catalog's log-mel features.

On the driver: the tracks are split by a stable hash of their id (``musicray.splits.split_tracks``,
10% held out, the same split evaluation uses), and the frame codebook is fitted by k-means on a
sample of training frames (deterministic for the seed). Ray Data then reads the features table,
turns the training tracks' log-mels into codebook tokens (``tokenize_batch``, in parallel) and keeps
them in the object store. Each epoch draws ``crops_per_track`` random ``crop_frames``-long windows per
track, shuffled so that a batch mixes tracks, each conditioned on the sound of another random
``sound_frames`` window of its track; the loss is next-token cross-entropy. After every epoch rank 0
scores (up to ``validation_tracks``) held-out tracks whole: ``val_loss``, nats per frame.

A resumed run keeps the codebook of its newest checkpoint; every trial of a search shares one
codebook and one tokenised dataset (``GeneratorTask.with_config``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from torch import nn

from models import build
from models.lstm_generator import PAD, LSTMGenerator, NextTokenObjective, fit_codebook, nearest
from musicray import storage, workspace
from musicray.checkpoints import newest_checkpoint, read_model_files
from musicray.catalog import track_labels
from musicray.generation import MODEL_NAME, track_logmels, workspace_layout
from musicray.splits import held_out_score, split_tracks
from musicray.schemas import parquet_files, read_features
from ray_jobs.common import init_ray
from ray_jobs.training import Prepared, Settings, checkpoint_files, shuffled_batches

SELECTION_METRIC = "val_loss"


@dataclass
class GeneratorSettings(Settings):
    batch_size: int = 16  # crop windows per optimiser step (per worker)
    lr: float = 2e-3
    grad_clip: float = 1.0
    # Training window: ~12 s. Generation runs seed + continuation (5 + 10 s by default) through
    # the LSTM; windows much shorter than that leave its state untrained past their length.
    crop_frames: int = 512
    crops_per_track: int = 2  # windows drawn per training track and epoch
    sound_frames: int = 216  # the other window of the track whose mean frame conditions a crop (~5 s, a seed)
    validation_tracks: int = 256  # held-out tracks scored after every epoch (the first by hash score)
    codebook_tracks: int = 256  # training tracks sampled for the codebook fit
    codebook_frames: int = 50_000  # frames of them the k-means sees
    codebook_iterations: int = 15


class GeneratorTask:
    model, metric, mode = MODEL_NAME, SELECTION_METRIC, "min"

    def __init__(self, model_config: dict, initial_state: ray.ObjectRef, validation: ray.ObjectRef,
                 settings: GeneratorSettings):
        self.model_config, self.settings = model_config, settings
        self.initial_state = initial_state  # codebook + the starting weights every rank loads
        self.validation_ref = validation  # tokens of the held-out tracks, scored by rank 0

    def with_config(self, train: dict, model: dict) -> "GeneratorTask":
        settings = replace(self.settings, **train)
        shared = build(MODEL_NAME, **self.model_config)
        shared.load_state_dict(ray.get(self.initial_state))
        fresh = with_config(shared, model, settings.seed)
        return GeneratorTask(asdict(fresh.config), ray.put(fresh.state_dict()), self.validation_ref, settings)

    def setup(self, rank: int, device: torch.device) -> None:
        self.validation = ray.get(self.validation_ref) if rank == 0 else None

    def build(self) -> nn.Module:
        model = build(MODEL_NAME, **self.model_config)
        model.load_state_dict(ray.get(self.initial_state))
        return model

    def objective(self, model: nn.Module) -> nn.Module:
        return NextTokenObjective(model)

    def batches(self, shard, epoch: int, rank: int, device: torch.device):
        settings = self.settings
        rng = np.random.default_rng([settings.seed, epoch, rank])  # the same windows on a re-run
        # Rows are tracks, each ``crops_per_track`` times; the shuffle buffer spreads a track's
        # copies over different steps (a batch of one track's windows learns ~2x slower).
        for batch in shuffled_batches(shard, settings, epoch, buffer_batches=16):
            # A crop (inputs + shifted targets), and another window of the same track for its sound.
            tokens = random_windows(batch["tokens"], batch["length"], settings.crop_frames + 1, rng).to(device)
            sound = random_windows(batch["tokens"], batch["length"], settings.sound_frames, rng).to(device)
            yield tokens, torch.tensor(batch["label"], device=device), sound

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {SELECTION_METRIC: validation_loss(model, self.validation, self.settings.sound_frames, device)}

    def vocabulary(self) -> list[str]:
        return list(self.model_config["labels"])  # vocab.json holds the style labels

    def checkpoint_extra(self) -> dict:
        return {"validation_fraction": self.settings.validation_fraction}


TASK, SETTINGS = GeneratorTask, GeneratorSettings  # what ray_jobs.tasks looks up by model name


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
    resume_from = newest_checkpoint(run_uri, checkpoint_files(settings)) if run_uri else None
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


def prepare(root: str, settings: GeneratorSettings, model_config: dict | None, run_uri: str | None,
            progress=print) -> Prepared:
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
    task = GeneratorTask(asdict(model.config), ray.put(model.state_dict()), ray.put(validation), settings)
    return Prepared(task, dataset, {"train_tracks": len(train_ids), "validation_tracks": len(held_out),
                                    "labels": list(model.config.labels)})


def summary(result) -> list[str]:
    """The line ``musicray train`` prints for a finished run."""
    best, info = result.best, result.info
    return [f"generator {result.run_id}: best epoch {best['epoch']} of {len(result.history)}, "
            f"val loss {best[SELECTION_METRIC]:.3f} nats/frame; {info['train_tracks']} training, "
            f"{info['validation_tracks']} held-out tracks"]
