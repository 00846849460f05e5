"""Continue a seed clip with the trained generator and write it as audio.

    musicray generate --root ROOT (--seed-track ID | --seed-audio FILE) --seconds S --out FILE
                      [--seed N] [--temperature T] [--label L] [--seed-seconds 5] [--max-seconds 30]
                      [--run RUN] [--include-seed] [--spectrogram PNG]

The seed is the first ``--seed-seconds`` of a catalog track's stored log-mel crop, or the last
``--seed-seconds`` of an audio file (so the continuation follows on from its end). The output format
follows ``--out``'s extension: .wav, .flac or .ogg. The same seed, temperature and inputs give the
same audio bytes. No Ray is needed: one clip is a few hundred milliseconds of CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from musicray.generation import (TrainedGenerator, audio_format, feature_config, load_generator, one_thread,
                                 plot_continuations, seconds_to_frames, seed_from_audio, track_logmels, write_audio)
from musicray.vocoder import Vocoder

PEAK = 0.99  # loudest sample after generation; Griffin-Lim can overshoot 1.0, which would clip


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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="musicray generate", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="workspace root with a trained generator")
    seed_source = parser.add_mutually_exclusive_group(required=True)
    seed_source.add_argument("--seed-track", help="track_id of a catalog track whose opening is the seed")
    seed_source.add_argument("--seed-audio", help="an audio file (path or s3:// URI) whose end is the seed")
    parser.add_argument("--seconds", type=float, required=True, help="length of the continuation")
    parser.add_argument("--out", required=True, help="output audio file: .wav, .flac or .ogg")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same audio")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: most likely)")
    parser.add_argument("--label", help="style label to condition on (one of the catalog's labels)")
    parser.add_argument("--seed-seconds", type=float, default=5.0, help="seconds of seed the model reads")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap on --seconds")
    parser.add_argument("--run", help="generator run id (default: the one LATEST names)")
    parser.add_argument("--include-seed", action="store_true", help="the output starts with the (vocoded) seed")
    parser.add_argument("--spectrogram", help="also write a PNG of seed + continuation here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        audio_format(args.out)  # a bad extension fails before any work
        if args.spectrogram is not None and not args.spectrogram.lower().endswith(".png"):
            raise ValueError(f"--spectrogram must name a .png file, got {args.spectrogram!r}")
        waveform, sample_rate, meta = generate_clip(
            args.root, seconds=args.seconds, seed_track=args.seed_track, seed_audio=args.seed_audio, seed=args.seed,
            temperature=args.temperature, label=args.label, seed_seconds=args.seed_seconds,
            max_seconds=args.max_seconds, include_seed=args.include_seed, run_id=args.run)
    except (ValueError, FileNotFoundError) as error:
        print(f"musicray generate: error: {error}", file=sys.stderr)
        return 2
    write_audio(args.out, waveform, sample_rate)
    if args.spectrogram:
        plot_continuations(args.spectrogram, meta["seed_logmel"], {"generated": meta["logmel"]},
                           meta["feature_config"], title=f"{meta['seed_source']}, seed {args.seed}")
    compute = meta["lstm_seconds"] + meta["vocoder_seconds"]
    print(f"wrote {args.out}: {meta['seconds']:.1f} s from {meta['seed_source']} (generator run {meta['run_id']}, "
          f"seed {args.seed}, temperature {args.temperature:g}) in {compute:.2f} s "
          f"(LSTM {meta['lstm_seconds']:.2f} s, vocoder {meta['vocoder_seconds']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
