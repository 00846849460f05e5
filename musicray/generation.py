"""Music generation around the trained generator: seeds, evaluation, baselines, audio files, plots.

No Ray here: the training job (``ray_jobs/train_generator.py``), the ``generate`` command and the
evaluation all share these pieces.

Evaluation. For each held-out track (the same hash split training used, ``split_tracks``) the
first ``seed_seconds`` of its log-mel are the seed and the next ``continuation_seconds`` the real
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

import contextlib
import hashlib
import io
import math
import struct
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import soundfile as sf
import torch

from models.lstm_generator import LSTMGenerator
from musicray import storage, workspace
from musicray.audio import AudioError, decode
from musicray.features import FeatureConfig, FeatureExtractor
from musicray.vocoder import Vocoder

MODEL_NAME = "generator"
VALIDATION_FRACTION = 0.1
AUDIO_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


# ---------------------------------------------------------------------------------------------
# Which tracks train and which are held out


def held_out_score(track_id: str) -> float:
    """A stable number in [0, 1) per track id: the same on every machine, run and catalog."""
    return int.from_bytes(hashlib.sha1(track_id.encode("utf-8")).digest()[:8], "big") / 2**64


def split_tracks(track_ids: list[str], fraction: float = VALIDATION_FRACTION) -> tuple[list[str], list[str]]:
    """(training, held-out) track ids: held out when ``held_out_score < fraction``.

    A track's side never depends on the others, so adding tracks to the catalog does not move
    old ones. Only when the hash holds out none of two or more tracks (tiny catalogs) is the one
    with the lowest score held out, so validation always has a track.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    ids = sorted(set(track_ids))
    held = [t for t in ids if held_out_score(t) < fraction]
    if not held and len(ids) >= 2:
        held = [min(ids, key=held_out_score)]
    chosen = set(held)
    return [t for t in ids if t not in chosen], held


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


def track_labels(root: str) -> dict[str, str]:
    """track_id -> label from the workspace's catalog (empty without a ``label`` column)."""
    import pyarrow.parquet as pq


    if not storage.exists(workspace.catalog_file(root)):
        return {}
    table = pq.read_table(io.BytesIO(storage.read_bytes(workspace.catalog_file(root))))
    if "label" not in table.column_names:
        return {}
    ids, labels = table.column("track_id").to_pylist(), table.column("label").to_pylist()
    return {t: str(label) for t, label in zip(ids, labels) if label is not None}


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
    plots = []
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
            plot_continuations(uri, seed_logmel, {"real": real, **heard}, config, title=f"track {track_id}")
            plots.append(uri)
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
        "plots": plots,
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


# ---------------------------------------------------------------------------------------------
# Pictures and audio files


def plot_continuations(uri: str, seed_logmel: torch.Tensor, continuations: dict[str, torch.Tensor],
                       config: FeatureConfig = FeatureConfig(), title: str = "") -> None:
    """One PNG: a row per continuation, each showing seed + continuation, a line where the seed ends."""
    from musicray import plots

    plt = plots.plt
    seed_logmel = torch.as_tensor(seed_logmel).float()
    figure, axes = plt.subplots(len(continuations), 1, figsize=(11, 2.2 * len(continuations) + 0.6), squeeze=False,
                                sharex=True, constrained_layout=True)
    frame_seconds = config.hop_length / config.sample_rate
    rows = {name: torch.cat([seed_logmel, torch.as_tensor(c).float()], dim=-1).numpy()
            for name, c in continuations.items()}
    top = max(float(whole.max()) for whole in rows.values())  # one colour scale for all rows
    for axis, (name, whole) in zip(axes[:, 0], rows.items()):
        image = axis.imshow(whole, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                            extent=(0, whole.shape[1] * frame_seconds, 0, whole.shape[0]))
        axis.axvline(seed_logmel.shape[-1] * frame_seconds, color="white", linestyle="--", linewidth=1)
        axis.set_ylabel("mel band")
        axis.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds (dashed line: end of the seed)")
    figure.colorbar(image, ax=axes[:, 0].tolist(), label="dB", fraction=0.02)
    if title:
        figure.suptitle(title)
    plots.save(figure, uri)


def audio_format(path: str) -> tuple[str, str]:
    """(libsndfile format, subtype) for an output path, by its extension."""
    extension = "." + str(path).rsplit(".", 1)[-1].lower() if "." in str(path).rsplit("/", 1)[-1] else ""
    if extension not in AUDIO_FORMATS:
        raise ValueError(f"unsupported audio output {path!r}: the extension must be one of "
                         f"{', '.join(AUDIO_FORMATS)}")
    return AUDIO_FORMATS[extension]


def encode_audio(waveform: np.ndarray, sample_rate: int, extension: str) -> bytes:
    """Audio file bytes; the same samples always give the same bytes (Ogg included)."""
    fmt, subtype = audio_format(f"clip{extension}")
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(waveform, dtype=np.float32), sample_rate, format=fmt, subtype=subtype)
    data = buffer.getvalue()
    return _fix_ogg_serial(data) if fmt == "OGG" else data


def write_audio(path: str, waveform: np.ndarray, sample_rate: int) -> None:
    """Write a mono waveform as WAV, FLAC or Ogg Vorbis, chosen by ``path``'s extension (local or s3://)."""
    fmt, _ = audio_format(path)
    extension = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg"}[fmt]
    storage.write_bytes(path, encode_audio(waveform, sample_rate, extension))


OGG_SERIAL = 0x6D726179  # "mray"


def _fix_ogg_serial(data: bytes) -> bytes:
    """Give every Ogg page a fixed stream serial number and recompute its CRC.

    libsndfile picks the serial at random per file, which is the only thing that makes two
    encodings of the same samples differ; fixing it makes seeded generation byte-reproducible.
    """
    out, position = bytearray(data), 0
    while position + 27 <= len(out):
        if out[position: position + 4] != b"OggS":
            raise ValueError("not an Ogg stream: page header expected")
        segments = out[position + 26]
        size = 27 + segments + sum(out[position + 27: position + 27 + segments])
        struct.pack_into("<I", out, position + 14, OGG_SERIAL)
        struct.pack_into("<I", out, position + 22, 0)  # the CRC is computed with its own field zeroed
        struct.pack_into("<I", out, position + 22, _ogg_crc(bytes(out[position: position + size])))
        position += size
    return bytes(out)


def _ogg_crc_table() -> list[int]:
    table = []
    for byte in range(256):  # CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0 (Ogg's)
        value = byte << 24
        for _ in range(8):
            value = ((value << 1) ^ 0x04C11DB7) if value & 0x80000000 else value << 1
        table.append(value & 0xFFFFFFFF)
    return table


_OGG_CRC_TABLE = _ogg_crc_table()


def _ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC_TABLE[(crc >> 24) ^ byte]
    return crc
