"""Music generation with the trained generator: which tracks it held out, seeds, loading, one clip.

No Ray here: the generator's training, the ``generate`` command, the generate endpoint and the
evaluation (``musicray.generation_eval``) share these pieces. A clip is the seed's log-mel (the
opening of a catalog track's stored crop, or the end of an audio file) continued by the LSTM over
frame tokens, then vocoded to a waveform (``musicray.vocoder``).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from models.lstm_generator import LSTMGenerator
from musicray import storage, workspace
from musicray.audio import AudioError, decode
from musicray.features import FeatureConfig, FeatureExtractor
from musicray.splits import VALIDATION_FRACTION, split_tracks
from musicray.vocoder import Vocoder

MODEL_NAME = "generator"
PEAK = 0.99  # loudest sample after generation; Griffin-Lim can overshoot 1.0, which would clip

# ---------------------------------------------------------------------------------------------
# Which tracks train and which are held out


def held_out_tracks(track_ids: list[str], fraction: float = VALIDATION_FRACTION) -> list[str]:
    """The tracks the generator did not train on (see ``split_tracks``)."""
    return split_tracks(track_ids, fraction)[1]


# ---------------------------------------------------------------------------------------------
# Log-mel of tracks and seeds


def feature_config(model: LSTMGenerator) -> FeatureConfig:
    """The extractor settings matching a generator's log-mel (to vocode and re-analyse it)."""
    c = model.config
    return FeatureConfig(sample_rate=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels)


def workspace_layout(root: str) -> dict:
    """The log-mel layout of a workspace's features (``n_mels``, ``n_frames``, ``sample_rate``,
    ``hop_length``), from the Parquet schema metadata the extractor writes."""
    import pyarrow.dataset as pads

    from musicray.schemas import parquet_files

    files = parquet_files(workspace.features_dir(root))
    if not files:
        raise ValueError(f"the workspace {root} has no features yet: run `musicray extract` first")
    fs, path = storage.resolve(files[0])
    metadata = pads.dataset(path, filesystem=fs, format="parquet").schema.metadata or {}
    defaults = FeatureConfig()
    return {"n_mels": int(metadata.get(b"n_mels", defaults.n_mels)),
            "n_frames": int(metadata.get(b"n_frames", defaults.n_frames)),
            "sample_rate": int(metadata.get(b"sample_rate", defaults.sample_rate)),
            "hop_length": int(metadata.get(b"hop_length", defaults.hop_length))}


def logmel_frames(flat, crop_frames: int, n_mels: int) -> np.ndarray:
    """One features-table row's ``logmel`` (flat, float16) -> (n_mels, crop_frames) float32 real frames."""
    values = np.asarray(flat, dtype=np.float32)
    if values.size % n_mels:
        raise ValueError(f"a log-mel of {values.size} values is not a whole number of {n_mels}-band frames")
    return np.ascontiguousarray(values.reshape(n_mels, -1)[:, :crop_frames])


def track_logmels(features: str | pd.DataFrame | pa.Table, track_ids: list[str], n_mels: int = 128
                  ) -> dict[str, np.ndarray]:
    """Real frames of each track's log-mel, from a workspace root or an in-memory features table.

    A root reads only the named tracks' rows. Ids without a row are absent from the result.
    """
    if isinstance(features, str):
        from musicray.schemas import read_features

        features = read_features(features, columns=["track_id", "logmel", "crop_frames"], track_ids=track_ids)
    if isinstance(features, pa.Table):
        features = features.select(["track_id", "logmel", "crop_frames"]).to_pandas()
    wanted = set(track_ids)
    rows = features[features["track_id"].isin(wanted)]
    return {row.track_id: logmel_frames(row.logmel, int(row.crop_frames), n_mels)
            for row in rows.itertuples(index=False)}


def seed_from_audio(source: str | bytes, seed_seconds: float, config: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """The log-mel (n_mels, T) of the last ``seed_seconds`` of an audio file (path/URI or bytes).

    The last seconds, because the continuation follows on from where the file ends. A file that
    is missing, empty or not decodable raises ValueError naming it.
    """
    name = "the seed audio" if isinstance(source, bytes) else f"seed audio {source}"
    try:
        data = source if isinstance(source, bytes) else storage.read_bytes(source)
    except (FileNotFoundError, OSError) as error:
        raise ValueError(f"cannot read {name}: {error}") from None
    try:
        clip = decode(data, config.sample_rate, crop_seconds=None, min_seconds=0.1)
    except AudioError as error:
        raise ValueError(f"{name} is not usable audio: {error}") from None
    samples = clip.samples[-max(1, int(round(seed_seconds * config.sample_rate))):]
    extractor = FeatureExtractor(config)
    return extractor(torch.from_numpy(np.ascontiguousarray(samples))[None])["logmel"][0]


@contextlib.contextmanager
def one_thread():
    """Run generation on one torch thread, then restore the caller's setting.

    Sampling is a batch-1 LSTM step per frame: a few small matmuls that threads only slow down
    (~8x with 2 threads on a 2-core machine); one core already runs it >10x real time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seconds_to_frames(seconds: float, config: FeatureConfig) -> int:
    return max(1, int(round(seconds * config.sample_rate / config.hop_length)))


# ---------------------------------------------------------------------------------------------
# Loading a trained generator and generating


@dataclass
class TrainedGenerator:
    run_id: str
    model: LSTMGenerator
    metrics: dict  # of the best epoch
    history: list[dict]
    validation_fraction: float  # of the split it trained on: evaluation holds out the same tracks


def load_generator(root: str, run_id: str | None = None, map_location: str = "cpu") -> TrainedGenerator:
    """The generator of ``run_id``, or of the run ``<root>/models/generator/LATEST`` names."""
    from musicray.checkpoints import read_model_files

    run_id = run_id or storage.read_pointer(workspace.model_pointer(root, MODEL_NAME))
    if run_id is None:
        raise FileNotFoundError(f"no trained generator in {root}: run `musicray train --model generator` first")
    directory = workspace.model_dir(root, MODEL_NAME, run_id)
    if not storage.exists(storage.join(directory, "config.json")):
        raise FileNotFoundError(f"generator run {run_id!r} has no published model in {directory}")
    model, _, meta = read_model_files(directory, map_location)
    return TrainedGenerator(run_id, model, meta.get("metrics", {}), meta.get("history", []),
                            meta.get("validation_fraction", VALIDATION_FRACTION))


@one_thread()
def generate_clip(root: str, *, seconds: float, seed_track: str | None = None, seed_audio: str | bytes | None = None,
                  seed: int = 0, temperature: float = 1.0, label: str | None = None, seed_seconds: float = 5.0,
                  max_seconds: float = 30.0, include_seed: bool = False, run_id: str | None = None,
                  generator: TrainedGenerator | None = None, vocoder: Vocoder | None = None
                  ) -> tuple[np.ndarray, int, dict]:
    """A generated continuation: (mono float32 waveform, sample rate, meta).

    ``seed_audio`` is a path/URI or the file's bytes (an upload). Pass a loaded ``generator`` (and
    ``vocoder``) to skip loading them per call, as a server would. ``meta`` holds the run id, the
    seed and continuation log-mels and their ``feature_config`` (for plots), the LSTM and vocoder
    times. Bad inputs raise ValueError naming them; a workspace without a trained generator raises
    FileNotFoundError.
    """
    if (seed_track is None) == (seed_audio is None):
        raise ValueError("give exactly one seed: a catalog track id or an audio file")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds:g}")
    if seconds > max_seconds:
        raise ValueError(f"{seconds:g} s requested, above the cap of {max_seconds:g} s (raise it with --max-seconds)")
    if not seed_seconds > 0:
        raise ValueError(f"seed seconds must be > 0, got {seed_seconds:g}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature:g}")
    generator = generator or load_generator(root, run_id)
    model = generator.model
    model.label_index(label)  # an unknown label fails before any work
    config = feature_config(model)
    vocoder = vocoder or Vocoder(config)

    if seed_track is not None:
        logmels = track_logmels(root, [seed_track], config.n_mels)
        if seed_track not in logmels:
            raise ValueError(f"unknown seed track {seed_track!r}: no such track_id in the features of {root}")
        seed_logmel = torch.from_numpy(logmels[seed_track][:, : seconds_to_frames(seed_seconds, config)])
    else:
        seed_logmel = seed_from_audio(seed_audio, seed_seconds, config)

    n_samples = int(round(seconds * config.sample_rate))
    n_frames = math.ceil(n_samples / config.hop_length) + 1  # enough frames to vocode n_samples, trimmed below
    started = time.perf_counter()
    continuation = model.generate(seed_logmel, n_frames, seed=seed, temperature=temperature, label=label)
    lstm_seconds = time.perf_counter() - started
    started = time.perf_counter()
    # With the seed, both are vocoded as one spectrogram so the phase runs on across the join.
    spectrogram = torch.cat([seed_logmel, continuation], dim=-1) if include_seed else continuation
    kept = n_samples + (seed_logmel.shape[-1] * config.hop_length if include_seed else 0)
    waveform = vocoder(spectrogram, seed=seed).numpy()[:kept]
    vocoder_seconds = time.perf_counter() - started
    peak = float(np.abs(waveform).max()) if waveform.size else 0.0
    gain = PEAK / peak if peak > PEAK else 1.0
    meta = {"run_id": generator.run_id, "seconds": len(waveform) / config.sample_rate, "frames": n_frames,
            "seed": seed, "temperature": temperature, "label": label,
            "seed_source": f"track {seed_track}" if seed_track is not None else
            ("uploaded audio" if isinstance(seed_audio, bytes) else f"file {seed_audio}"),
            "seed_logmel": seed_logmel, "logmel": continuation, "feature_config": config, "gain": gain,
            "lstm_seconds": lstm_seconds, "vocoder_seconds": vocoder_seconds}
    return (waveform * gain).astype(np.float32), config.sample_rate, meta
