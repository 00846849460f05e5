"""``musicray <command> [args]``: a thin dispatcher; each command's module owns its arguments."""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module with a main(argv) function, one-line help)
COMMANDS = {
    "quickstart": ("ray_jobs.quickstart", "build the demo catalog and run every stage locally"),
    "demo-data": ("musicray.cli", "write the synthetic demo catalog and listening sessions"),
    "extract": ("ray_jobs.extract", "extract audio features from a catalog into the workspace"),
    "train": ("ray_jobs.train", "train the recommenders or the music generator with Ray Train"),
    "tune": ("ray_jobs.tune", "search hyperparameters of a model with Ray Tune (ASHA, Optuna); best config for train"),
    "evaluate": ("ray_jobs.evaluate", "score the models on held-out sessions and tracks against baselines"),
    "generate": ("ray_jobs.generate", "continue a seed clip with the trained generator, write audio"),
    "refresh": ("ray_jobs.refresh", "extract, embed the catalog with every model, index it, publish a snapshot"),
    "serve": ("ray_jobs.serve", "serve recommendations and generation over HTTP (Ray Serve, --local on this machine)"),
}


def demo_data(argv=None) -> int:
    from musicray.demo import generate

    parser = argparse.ArgumentParser(prog="musicray demo-data", description=COMMANDS["demo-data"][1])
    parser.add_argument("--out", required=True, help="folder to write audio, catalog.parquet and sessions to")
    parser.add_argument("--tracks", type=int, default=300)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each track")
    args = parser.parse_args(argv)
    try:
        demo = generate(args.out, tracks=args.tracks, users=args.users, seed=args.seed, seconds=args.seconds,
                        progress=print)
    except ValueError as error:
        parser.error(str(error))
    print(f"demo catalog: {demo.manifest}\nsessions: {demo.sessions_train}, {demo.sessions_test}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
        print(f"usage: musicray <command> [--help | args]\n\ncommands:\n{lines}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"musicray: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "demo-data":
        return demo_data(rest)
    return importlib.import_module(COMMANDS[command][0]).main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
