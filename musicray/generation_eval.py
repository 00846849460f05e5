"""How good the generator's continuations are: Fréchet distances against baselines and references.

For each held-out track (the same hash split training used, ``musicray.splits.split_tracks``)
the first ``seed_seconds`` of its log-mel are the seed and the next ``continuation_seconds`` the real
continuation. Each candidate continuation is rendered to audio exactly like the model's output
(log-mel -> ``Vocoder`` -> waveform) and analysed again by the feature extractor, so that all of
them pay the same vocoder loss:

* ``generator``                 the model's sampled continuation;
* ``loop-seed (baseline)``      the seed's frames repeated;
* ``shaped-noise (baseline)``   stationary noise with the seed's average mel power spectrum,
                                through the same mel inverse as the vocoder;
* ``vocoded-real (reference)``  the real continuation itself, vocoded: the floor the vocoder sets;
* ``codebook-real (reference)`` the real continuation replaced by its nearest codebook frames,
                                vocoded: the floor the codebook sets, the best the model can reach.

The score is the Fréchet distance between Gaussian fits of per-frame 128-d log-mel vectors (dB)
of a candidate's continuations, pooled over tracks, and those of the real continuations. Per-frame
vectors rather than windowed means: a frame is the unit the model emits, they carry the timbre
*and* its frame-to-frame spread (a blurred or frozen continuation has the right mean but too
little variance), and 10 s give ~430 of them per track, enough for a 128-d covariance from a few
dozen tracks. Lower is better; it says nothing of long-range structure, which loop-seed keeps
by construction.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from models.lstm_generator import LSTMGenerator
from musicray import plots, storage
from musicray.features import FeatureExtractor
from musicray.generation import (TrainedGenerator, feature_config, held_out_tracks, load_generator, one_thread,
                                 seconds_to_frames, track_logmels)
from musicray.vocoder import Vocoder

# ---------------------------------------------------------------------------------------------
# Scores and baselines


def gaussian_fit(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of (N, D) vectors, in float64."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2 or len(frames) < 2:
        raise ValueError(f"need (N >= 2, D) vectors to fit a Gaussian, got shape {frames.shape}")
    return frames.mean(axis=0), np.cov(frames, rowvar=False)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two sets of (N, D) vectors.

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)``; the matrix square
    roots come from symmetric eigendecompositions, so no complex parts or ``sqrtm`` warnings.
    """
    (mu_a, cov_a), (mu_b, cov_b) = gaussian_fit(a), gaussian_fit(b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"vectors differ in size: {mu_a.shape[0]} and {mu_b.shape[0]}")
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)).sum()
    distance = np.square(mu_a - mu_b).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(distance, 0.0))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def loop_seed(seed_logmel: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Baseline: the seed's frames repeated until ``n_frames``."""
    repeats = math.ceil(n_frames / seed_logmel.shape[-1])
    return seed_logmel.repeat(1, repeats)[:, :n_frames]


def shaped_noise(seed_logmel: torch.Tensor, n_frames: int, vocoder: Vocoder, *, seed: int) -> torch.Tensor:
    """Baseline waveform: stationary noise with the seed's average mel power spectrum."""
    mean_power = torch.pow(10.0, seed_logmel.float() / 10.0).mean(dim=-1)
    return vocoder.noise(mean_power, n_frames, seed=seed)


# ---------------------------------------------------------------------------------------------
# Evaluation


CANDIDATES = ("generator", "loop-seed (baseline)", "shaped-noise (baseline)", "vocoded-real (reference)",
              "codebook-real (reference)")


@one_thread()
def evaluate_generation(trained: TrainedGenerator | LSTMGenerator, features: str | pd.DataFrame | pa.Table,
                        track_ids: list[str], *, seed_seconds: float = 5.0, continuation_seconds: float = 10.0,
                        seed: int = 0, temperature: float = 1.0, vocoder: Vocoder | None = None,
                        plot_dir: str | None = None, n_plots: int = 2, progress=None) -> dict:
    """Fréchet distances of the model's and the baselines' continuations of ``track_ids``.

    Tracks too short for seed + continuation are skipped and counted. With ``plot_dir``, the first
    ``n_plots`` tracks get a spectrogram PNG of seed + every continuation. Returns a JSON-ready dict.
    """
    model = trained.model if isinstance(trained, TrainedGenerator) else trained
    model.eval()
    config = feature_config(model)
    vocoder = vocoder or Vocoder(config)
    extractor = FeatureExtractor(config)
    seed_frames = seconds_to_frames(seed_seconds, config)
    continuation_frames = seconds_to_frames(continuation_seconds, config)
    logmels = track_logmels(features, track_ids, config.n_mels)
    usable = [t for t in sorted(logmels) if logmels[t].shape[1] >= seed_frames + continuation_frames]
    if not usable:
        raise ValueError(f"none of the {len(track_ids)} evaluation tracks has "
                         f"{seed_seconds + continuation_seconds:g} s of audio for seed + continuation")
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in ("real", *CANDIDATES)}
    plot_files = []
    for i, track_id in enumerate(usable):
        frames = torch.from_numpy(logmels[track_id])
        seed_logmel = frames[:, :seed_frames]
        real = frames[:, seed_frames: seed_frames + continuation_frames]
        waveforms = {
            "generator": vocoder(model.generate(seed_logmel, continuation_frames, seed=seed + i,
                                                temperature=temperature), seed=seed + i),
            "loop-seed (baseline)": vocoder(loop_seed(seed_logmel, continuation_frames), seed=seed + i),
            "shaped-noise (baseline)": shaped_noise(seed_logmel, continuation_frames, vocoder, seed=seed + i),
            "vocoded-real (reference)": vocoder(real, seed=seed + i),
            "codebook-real (reference)": vocoder(model.detokenize(model.tokenize(real)), seed=seed + i),
        }
        heard = {name: extractor(w[None])["logmel"][0] for name, w in waveforms.items()}
        pooled["real"].append(real.T.numpy())
        for name, logmel in heard.items():
            pooled[name].append(logmel.T.numpy())
        if plot_dir is not None and i < n_plots:
            uri = storage.join(plot_dir, f"generation_{_safe_name(track_id)}.png")
            plots.continuations(uri, seed_logmel, {"real": real, **heard}, config, title=f"track {track_id}")
            plot_files.append(uri)
        if progress:
            progress(f"generation: {i + 1}/{len(usable)} tracks")
    real_frames = np.concatenate(pooled["real"])
    frechet = {name: frechet_distance(np.concatenate(pooled[name]), real_frames) for name in CANDIDATES}
    baselines = {n: v for n, v in frechet.items() if n.endswith("(baseline)")}
    best_baseline = min(baselines, key=baselines.get)
    return {
        "tracks": len(usable), "skipped_too_short": len(logmels) - len(usable),
        "missing_features": len(set(track_ids) - set(logmels)),
        "seed_seconds": seed_seconds, "continuation_seconds": continuation_seconds,
        "seed": seed, "temperature": temperature, "frames_per_candidate": int(len(real_frames)),
        "frechet": frechet, "best_baseline": best_baseline,
        "generator_beats_best_baseline": frechet["generator"] < baselines[best_baseline],
        "plots": plot_files,
    }


def evaluate_workspace(root: str, *, plot_dir: str | None = None, run_id: str | None = None, seed: int = 0,
                       seed_seconds: float = 5.0, continuation_seconds: float = 10.0, temperature: float = 1.0,
                       max_tracks: int | None = None, progress=None) -> dict | None:
    """``evaluate_generation`` of the workspace's generator on the tracks its training held out;
    None when no generator was trained yet. ``max_tracks`` keeps the first held-out tracks by id."""
    from musicray.schemas import read_features

    try:
        generator = load_generator(root, run_id)
    except FileNotFoundError:
        return None
    ids = read_features(root, columns=["track_id"]).column("track_id").to_pylist()
    held_out = held_out_tracks(ids, generator.validation_fraction)[:max_tracks]
    metrics = evaluate_generation(generator, root, held_out, seed_seconds=seed_seconds,
                                  continuation_seconds=continuation_seconds, seed=seed, temperature=temperature,
                                  plot_dir=plot_dir, progress=progress)
    return {"run_id": generator.run_id, **metrics}


def generation_report(metrics: dict) -> list[str]:
    """Markdown lines for a report's generation section."""
    lines = ["## Generation: Fréchet distance of continuations (lower is better)", "",
             f"{metrics['tracks']} held-out tracks, {metrics['seed_seconds']:g} s seed, "
             f"{metrics['continuation_seconds']:g} s continuation, temperature {metrics['temperature']:g}; "
             "per-frame log-mel statistics against the real continuations, every candidate vocoded alike.", "",
             "| continuation | Fréchet distance |", "|---|---|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in metrics["frechet"].items()]
    verdict = "beats" if metrics["generator_beats_best_baseline"] else "does not beat"
    lines += ["", f"The generator {verdict} the best baseline ({metrics['best_baseline']})."]
    return lines


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80]
