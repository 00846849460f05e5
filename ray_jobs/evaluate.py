"""Evaluate every trained model against its baselines: full-catalog ranking, then generation.

    python -m ray_jobs.evaluate --root ROOT --sessions-test LOG --out DIR [--sessions-train LOG]
                                [--models M,...] [--generation-tracks N] [--generation-seed-seconds S]
                                [--generation-seconds S]

At every position of every test session the whole catalog is ranked given the prefix;
HR/MRR/NDCG@10,20 are reported for each model (its LATEST run) and for the baselines
popularity, item-kNN, session-kNN, sequential rules and Markov, on all targets and on cold
targets (tracks never played in training). With a ``label`` column in the catalog, each
track space is also scored by label precision@10 of its nearest neighbours, against an
MFCC-statistics space. When a music generator was trained, a generation section scores its
continuations of held-out tracks by Fréchet distance against looping the seed and noise shaped
to the seed's spectrum (``musicray.generation_eval``), with spectrogram PNGs of seed + continuation.
When a tagger was trained, a tagging section scores it on the test tracks of the track split
(accuracy, macro-F1, ROC-AUC per tag column, confusion-matrix PNGs) against MFCC statistics +
logistic regression (``musicray.tagging_eval``).
Writes ``metrics.json``, ``report.md`` and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

import pandas as pd
import torch

from models import RECOMMENDERS
from models.tagger import CATEGORICAL
from musicray import plots, storage
from musicray.baselines import baselines, mfcc_baseline_vectors
from musicray.catalog import read_catalog, track_labels
from musicray.checkpoints import load_trained
from musicray.content import TrackCatalog
from musicray.generation_eval import evaluate_workspace, generation_report
from musicray.tagging import tag_column
from musicray.tagging_eval import evaluate_tagging, summary_line, tagging_report
from musicray.metrics import evaluate, label_precision_at_k, paired_difference
from musicray.schemas import read_features
from musicray.scoring import ModelScorer
from musicray.sessions import cold_tracks, load_log, make_examples

HEADLINE = ("HR@20", "MRR@20")


def run_evaluate(root: str, sessions_test: str, out: str, sessions_train: str | None = None,
                 models: list[str] | None = None, generation_tracks: int = 32, seed_seconds: float = 5.0,
                 continuation_seconds: float = 10.0) -> dict:
    root, out = storage.normalize(root), storage.normalize(out)
    catalog = TrackCatalog.from_workspace(root, audio_run=None)  # the tracks; each model reads its own content
    trained = {}
    for name in models or RECOMMENDERS:
        try:
            trained[name] = load_trained(root, name)
        except FileNotFoundError:
            if models:  # asked for by name: say so; otherwise evaluate what exists
                raise
    sessions_train = sessions_train or next((t.sessions for t in trained.values()), None)
    if not sessions_train:
        raise ValueError("no training log known: pass --sessions-train (needed by the baselines and for cold tracks)")
    train_log, test_log = load_log(sessions_train), load_log(sessions_test)
    cold = cold_tracks(train_log, catalog.track_ids)
    examples = make_examples(test_log, catalog.track_ids, cold)
    if len(examples) == 0:
        raise ValueError(f"test log {sessions_test} has no session with two or more known tracks")

    contents = {run: TrackCatalog.from_workspace(root, audio_run=run) for run in {t.audio_run for t in trained.values()}}
    model_scorers = {name: ModelScorer(name, t.model, contents[t.audio_run], t.vocabulary) for name, t in trained.items()}
    scorers = baselines(train_log, catalog.track_ids) + list(model_scorers.values())
    ranking, ranks = {}, {}
    for scorer in scorers:
        ranking[scorer.name] = evaluate(scorer, examples)
        ranks[scorer.name] = ranking[scorer.name].pop("ranks")
        print(f"  {scorer.name:<17} HR@20 {ranking[scorer.name]['all']['HR@20']:.4f}  "
              f"MRR@20 {ranking[scorer.name]['all']['MRR@20']:.4f}  ({ranking[scorer.name]['seconds']:.1f} s)")

    metrics = {
        "created_at": datetime.now(timezone.utc).isoformat(), "root": root,
        "sessions_train": sessions_train, "sessions_test": sessions_test,
        "catalog_tracks": len(catalog), "cold_tracks": len(cold),
        "examples": len(examples), "cold_examples": int(examples.cold.sum()), "dropped_plays": examples.dropped,
        "ranking": ranking,
        "against_baselines": against_baselines(ranking, ranks, set(trained)),
        "models": {name: {"run_id": t.run_id, "best": t.metrics, "history": t.history}
                   for name, t in trained.items()},
    }
    labels = _labels(root, catalog.track_ids)
    if labels and len(labels) <= 10:
        print(f"  label precision@10 needs more than 10 tracks; the catalog has {len(labels)}: left out")
        labels = None
    if labels:
        features = read_features(root, columns=["track_id", "mfcc_mean", "mfcc_std"]).to_pandas()
        features = features.set_index("track_id").loc[catalog.track_ids]  # rows in catalog order, as labels
        spaces = {"mfcc-statistics (baseline)": mfcc_baseline_vectors(features), **_track_spaces(model_scorers)}
        metrics["label_precision@10"] = {name: label_precision_at_k(v, labels, k=10) for name, v in spaces.items()}
        moods = _moods(root, catalog.track_ids)
        if moods:  # a catalog with a mood column: are neighbours of one mood too?
            metrics["mood_precision@10"] = {name: label_precision_at_k(v, moods, k=10) for name, v in spaces.items()}

    tagging = evaluate_tagging(root, plot_dir=out)
    if tagging:  # None: no tagger trained yet
        metrics["tagging"] = tagging
        print(f"  tagging: {summary_line(tagging)}")

    if generation_tracks > 0:
        try:
            generation = evaluate_workspace(root, plot_dir=out, max_tracks=generation_tracks, seed_seconds=seed_seconds,
                                            continuation_seconds=continuation_seconds)
        except ValueError as error:  # e.g. held-out tracks too short: the ranking still stands
            generation = {"not_evaluated": str(error)}
        if generation:  # None: no generator trained yet
            metrics["generation"] = generation
            print(f"  generation: {_generation_line(generation)}")

    storage.write_text(storage.join(out, "metrics.json"), json.dumps(metrics, indent=2, default=float))
    plots.hit_rates(ranking, set(trained), storage.join(out, "hit_rates.png"))
    if trained:
        plots.training_curves({n: t.history for n, t in trained.items()},
                              storage.join(out, "training_curves.png"))
    if labels:
        plots.track_maps(spaces, labels, storage.join(out, "track_map.png"))
    storage.write_text(storage.join(out, "report.md"), report(metrics, set(trained)))
    return metrics


def _generation_line(generation: dict) -> str:
    if "not_evaluated" in generation:
        return f"not evaluated: {generation['not_evaluated']}"
    frechet = generation["frechet"]
    return (f"Fréchet distance {frechet['generator']:.0f}, best baseline {frechet[generation['best_baseline']]:.0f} "
            f"({generation['best_baseline']}), {generation['tracks']} held-out tracks")


def against_baselines(ranking: dict, ranks: dict, models: set[str]) -> list[dict]:
    """Each model against the best baseline on each headline metric, with a paired-bootstrap verdict."""
    baseline_names = [n for n in ranking if n not in models]
    comparisons = []
    for metric in HEADLINE:
        if not baseline_names:
            break
        best = max(baseline_names, key=lambda n: ranking[n]["all"][metric])
        for name in sorted(models):
            difference, low, high = paired_difference(ranks[name], ranks[best], metric)
            verdict = "beats" if low > 0 else "loses to" if high < 0 else "ties with"
            comparisons.append({"model": name, "baseline": best, "metric": metric, "verdict": verdict,
                                "model_value": ranking[name]["all"][metric],
                                "baseline_value": ranking[best]["all"][metric],
                                "difference": difference, "low": low, "high": high})
    return comparisons


def _moods(root: str, track_ids: list[str]) -> list[str] | None:
    """Each track's mood, "unknown" without one, when the catalog has a categorical ``mood`` column."""
    table = read_catalog(root)
    if "mood" not in table.column_names:
        return None
    try:
        column = tag_column(table, "mood")
    except ValueError:  # not a column of categories
        return None
    if column.kind != CATEGORICAL or not column.values:
        return None
    return [column.values.get(t, ("unknown",))[0] for t in track_ids]


def _labels(root: str, track_ids: list[str]) -> list[str] | None:
    """Each track's catalog label, "unknown" for a track without one; None when no track has a label."""
    labels = track_labels(root)
    if not labels:
        return None
    return [labels.get(t, "unknown") for t in track_ids]


@torch.no_grad()
def _track_spaces(scorers: dict[str, ModelScorer]) -> dict:
    """Each model's track vectors (its recommendation space), plus audio-only latents where it has them."""
    spaces = {}
    for name, scorer in scorers.items():
        spaces[name] = scorer.track_vectors.cpu().numpy()
        if hasattr(scorer.model, "latent"):
            spaces[f"{name} (audio latent)"] = scorer.model.latent(scorer.catalog_content).cpu().numpy()
    return spaces


def report(metrics: dict, models: set[str]) -> str:
    ranking = metrics["ranking"]
    lines = [
        "# Evaluation report", "",
        f"{metrics['examples']} next-track positions from the test sessions ({metrics['cold_examples']} with a cold "
        f"target), each ranked over the whole catalog of {metrics['catalog_tracks']} tracks "
        f"({metrics['cold_tracks']} cold: never played in training). Training log: `{metrics['sessions_train']}`.",
        "",
        "## Next-track ranking", "",
        _table(ranking, "all"), "",
        "## Cold targets", "",
        _table(ranking, "cold") if metrics["cold_examples"] else "No test target is a cold track.", "",
        "## Models against baselines", "",
    ]
    lines.append("Each model against the best baseline on that metric; the interval is the 95% paired "
                 "bootstrap interval of the difference over the same test positions, and a lead whose "
                 "interval includes 0 is reported as a tie.")
    lines.append("")
    for c in metrics["against_baselines"]:
        lines.append(f"- **{c['model']}** {c['verdict']} **{c['baseline']}** on {c['metric']}: "
                     f"{c['model_value']:.4f} vs {c['baseline_value']:.4f} "
                     f"(difference {c['difference']:+.4f}, 95% interval {c['low']:+.4f} to {c['high']:+.4f}).")
    baseline_names = [n for n in ranking if n not in models]
    for name in baseline_names:
        beaten_by = [m for m in sorted(models) if ranking[m]["all"]["MRR@20"] > ranking[name]["all"]["MRR@20"]]
        if models and not beaten_by:
            lines.append(f"- The baseline **{name}** wins on MRR@20 over every model.")
    if "label_precision@10" in metrics and "mood_precision@10" in metrics:
        lines += ["", "## Track spaces: label and mood precision@10 of nearest neighbours", "",
                  "| space | label precision@10 | mood precision@10 |", "|---|---|---|"]
        lines += [f"| {n} | {v:.3f} | {metrics['mood_precision@10'][n]:.3f} |"
                  for n, v in metrics["label_precision@10"].items()]
    elif "label_precision@10" in metrics:
        lines += ["", "## Track spaces: label precision@10 of nearest neighbours", "",
                  "| space | precision@10 |", "|---|---|"]
        lines += [f"| {n} | {v:.3f} |" for n, v in metrics["label_precision@10"].items()]
    if "tagging" in metrics:
        lines += ["", *tagging_report(metrics["tagging"])]
    generation = metrics.get("generation")
    if generation and "not_evaluated" in generation:
        lines += ["", "## Generation", "", f"Not evaluated: {generation['not_evaluated']}"]
    elif generation:
        lines += ["", *generation_report(generation), ""]
        lines += [f"![seed and continuations]({uri.rpartition('/')[2]})" for uri in generation["plots"]]
    lines += ["", "![hit rates](hit_rates.png)", ""]
    if models:
        lines += ["![training curves](training_curves.png)", ""]
    if "label_precision@10" in metrics:
        lines += ["![track map](track_map.png)", ""]
    return "\n".join(lines)


def _table(ranking: dict, subset: str) -> str:
    columns = ["HR@10", "MRR@10", "NDCG@10", "HR@20", "MRR@20", "NDCG@20"]
    rows = ["| scorer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    order = sorted(ranking, key=lambda n: -ranking[n][subset].get("MRR@20", 0.0))
    for name in order:
        values = ranking[name][subset]
        rows.append(f"| {name} | " + " | ".join(f"{values.get(c, 0.0):.4f}" for c in columns) + " |")
    return "\n".join(rows)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="musicray evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--sessions-test", required=True, help="held-out listening log (Parquet)")
    parser.add_argument("--sessions-train", help="training log (default: the one the models were trained on)")
    parser.add_argument("--out", required=True, help="folder (or s3:// prefix) for metrics.json, report.md, plots")
    parser.add_argument("--models", help=f"comma-separated subset of {','.join(RECOMMENDERS)} (default: all trained)")
    parser.add_argument("--generation-tracks", type=int, default=32,
                        help="held-out tracks the generator continues (0: skip the generation section)")
    parser.add_argument("--generation-seed-seconds", type=float, default=5.0, help="seed the generator continues")
    parser.add_argument("--generation-seconds", type=float, default=10.0, help="continuation scored per track")
    args = parser.parse_args(argv)
    if args.generation_tracks < 0:
        parser.error(f"--generation-tracks must be >= 0, got {args.generation_tracks}")
    if not (args.generation_seed_seconds > 0 and args.generation_seconds > 0):
        parser.error("--generation-seed-seconds and --generation-seconds must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    models = args.models.split(",") if args.models else None
    try:
        metrics = run_evaluate(args.root, args.sessions_test, args.out, args.sessions_train, models,
                               args.generation_tracks, args.generation_seed_seconds, args.generation_seconds)
    except (ValueError, FileNotFoundError) as error:
        print(f"musicray evaluate: error: {error}", file=sys.stderr)
        return 2
    print(pd.DataFrame({n: r["all"] for n, r in metrics["ranking"].items()}).T[list(HEADLINE)].round(4).to_string())
    print(f"report: {storage.join(storage.normalize(args.out), 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
