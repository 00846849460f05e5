"""Real-time factor of the generator: seconds of audio per second of compute, on one CPU core.

    python -m benchmarks.generate [--root workspace] [--seconds 10] [--repeats 5]

Uses the trained generator of ``--root`` (``musicray train --model generator``) when there is
one, else a freshly initialised model of the default config (same size, so the same speed;
the output says which). A 10 s continuation of a 5 s seed is timed in two parts, LSTM sampling
and vocoding (inverse mel + Griffin-Lim), each the median of ``--repeats`` runs after one
warm-up. Target: total >= 10x real time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

TARGET = 10.0


def load_or_fresh(root: str | None):
    """(model, description): the workspace's trained generator, or an untrained default one."""
    from models import build
    from musicray.generation import load_generator

    if root:
        try:
            trained = load_generator(root)
            return trained.model, f"trained generator, run {trained.run_id} in {root}"
        except FileNotFoundError as error:
            reason = str(error)
    else:
        reason = "no --root given"
    torch.manual_seed(0)
    model = build("generator")
    with torch.no_grad():  # any codebook will do for timing: the cost does not depend on its values
        model.codebook.normal_()
        model.mel_std.fill_(10.0)
        model.mel_mean.fill_(-30.0)
    return model.eval(), f"freshly initialised default-config generator ({reason})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="workspace", help="workspace with a trained generator (default ./workspace)")
    parser.add_argument("--seconds", type=float, default=10.0, help="continuation length")
    parser.add_argument("--seed-seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the target is per core

    from musicray.generation import feature_config, seconds_to_frames
    from musicray.vocoder import Vocoder

    model, which = load_or_fresh(args.root)
    config = feature_config(model)
    vocoder = Vocoder(config)
    # A seed of the catalog's own frame shapes: a plausible spectrogram at any codebook.
    seed_tokens = torch.randint(0, model.config.codebook_size, (seconds_to_frames(args.seed_seconds, config),),
                                generator=torch.Generator().manual_seed(0))
    seed_logmel = model.detokenize(seed_tokens)
    n_samples = int(round(args.seconds * config.sample_rate))
    n_frames = math.ceil(n_samples / config.hop_length) + 1  # as `musicray generate`: vocode, then trim

    lstm, vocoding = [], []
    for repeat in range(args.repeats + 1):
        started = time.perf_counter()
        continuation = model.generate(seed_logmel, n_frames, seed=repeat, temperature=1.0)
        middle = time.perf_counter()
        waveform = vocoder(continuation, seed=repeat)[:n_samples]
        ended = time.perf_counter()
        if repeat:  # the first run warms up allocators and caches
            lstm.append(middle - started)
            vocoding.append(ended - middle)
    audio = len(waveform) / config.sample_rate
    lstm_s, vocoder_s = statistics.median(lstm), statistics.median(vocoding)
    total_s = lstm_s + vocoder_s
    c = model.config
    print(f"model: {which}")
    print(f"  LSTM {c.layers}x{c.hidden}, codebook {c.codebook_size}; vocoder: {vocoder.nnls_iter} NNLS + "
          f"{vocoder.n_iter} Griffin-Lim iterations; 1 CPU thread; {audio:.2f} s continuation, "
          f"median of {args.repeats}")
    print(f"  {'stage':<14} {'seconds':>8} {'x real time':>12}")
    for name, seconds in (("LSTM sampling", lstm_s), ("vocoding", vocoder_s), ("total", total_s)):
        print(f"  {name:<14} {seconds:8.3f} {audio / seconds:11.1f}x")
    verdict = "met" if audio / total_s >= TARGET else "MISSED"
    print(f"real-time factor {audio / total_s:.1f}x   target >= {TARGET:.0f}x: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
