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
import sys

from musicray import plots
from musicray.audio import audio_format, write_audio
from musicray.generation import generate_clip


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
        plots.continuations(args.spectrogram, meta["seed_logmel"], {"generated": meta["logmel"]},
                            meta["feature_config"], title=f"{meta['seed_source']}, seed {args.seed}")
    compute = meta["lstm_seconds"] + meta["vocoder_seconds"]
    print(f"wrote {args.out}: {meta['seconds']:.1f} s from {meta['seed_source']} (generator run {meta['run_id']}, "
          f"seed {args.seed}, temperature {args.temperature:g}) in {compute:.2f} s "
          f"(LSTM {meta['lstm_seconds']:.2f} s, vocoder {meta['vocoder_seconds']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
