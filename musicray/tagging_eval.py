"""Evaluating the tagger on the test tracks, against MFCC statistics + logistic regression.

The tracks are split as the tagger was trained (``musicray.splits.train_validation_test``): the
tagger learned from the training tracks and chose its checkpoint on the validation tracks, and the
baseline (``mfcc_mean`` and ``mfcc_std`` of the features table, standardised on the training
tracks, then scikit-learn's logistic regression; one per value for a multi-label column) is fitted
on the same training tracks with the same vocabulary. Both are scored on the test tracks that have a
value of the tagger's vocabulary in each column: accuracy, macro-F1 and macro ROC-AUC
(``musicray.tagging.tag_metrics``), and a categorical column gets a confusion-matrix plot of both.
The tagger's content is rebuilt with the audio encoder run it recorded.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.tagger import CATEGORICAL
from musicray import plots, storage
from musicray.baselines import mfcc_baseline_vectors
from musicray.catalog import read_catalog
from musicray.content import TrackCatalog
from musicray.schemas import read_features
from musicray.splits import train_validation_test
from musicray.tagging import (NothingToLearn, latest_tagger_run, load_tagger, predict, tag_column, tag_metrics, tagged,
                              targets)

BASELINE = "mfcc-statistics + logistic regression (baseline)"
METRICS = ("accuracy", "macro_F1", "ROC_AUC")


def evaluate_tagging(root: str, plot_dir: str) -> dict | None:
    """The tagging section of ``musicray evaluate``; None when no tagger is trained."""
    run = latest_tagger_run(root)
    if run is None:
        return None
    tagger = load_tagger(root, run)
    catalog = TrackCatalog.from_workspace(root, audio_run=tagger.audio_run)
    table = read_catalog(root)
    train_ids, _, test_ids = train_validation_test(catalog.track_ids)
    train_rows = np.asarray([catalog.index[t] for t in train_ids], dtype=np.int64)
    test_rows = np.asarray([catalog.index[t] for t in test_ids], dtype=np.int64)
    features = read_features(root, columns=["track_id", "mfcc_mean", "mfcc_std"]).to_pandas()
    mfcc = mfcc_baseline_vectors(features.set_index("track_id").loc[catalog.track_ids])
    probabilities = predict(tagger, catalog.content)

    section = {"run": run, "audio_run": tagger.audio_run, "test_tracks": len(test_rows), "columns": {}, "plots": []}
    for head, tagger_probabilities in zip(tagger.heads, probabilities):
        name, kind, values = head["column"], head["kind"], head["values"]
        try:
            column = tag_column(table, name)
        except (NothingToLearn, ValueError) as error:  # the catalog lost or changed the column since training
            section["columns"][name] = {"not_evaluated": str(error)}
            continue
        target = targets(column, values, catalog.track_ids)
        fit_rows, score_rows = train_rows[tagged(kind, target[train_rows])], test_rows[tagged(kind, target[test_rows])]
        if len(score_rows) == 0:
            section["columns"][name] = {"not_evaluated": f"none of the {len(test_rows)} test tracks has a value of "
                                                         f"the tagger's {name!r} vocabulary in the catalog"}
            continue
        if kind == CATEGORICAL and len(np.unique(target[fit_rows])) < 2:
            section["columns"][name] = {"not_evaluated": f"the training tracks hold fewer than two of the tagger's "
                                                         f"{name!r} values now: the baseline cannot be fitted"}
            continue
        baseline_probabilities = _baseline(kind, mfcc[fit_rows], target[fit_rows], len(values), mfcc[score_rows])
        truth = target[score_rows]
        result = {"kind": kind, "values": values, "test_tracks": int(len(score_rows)),
                  "untagged_test_tracks": int(len(test_rows) - len(score_rows)),
                  "tagger": tag_metrics(kind, truth, tagger_probabilities[score_rows]),
                  BASELINE: tag_metrics(kind, truth, baseline_probabilities)}
        if kind == CATEGORICAL:
            uri = storage.join(plot_dir, f"tagging_confusion_{name}.png")
            matrices = {"tagger": _confusion(truth, tagger_probabilities[score_rows].argmax(1), len(values)),
                        BASELINE: _confusion(truth, baseline_probabilities.argmax(1), len(values))}
            plots.confusion_matrices(matrices, values, uri, title=f"{name}: {len(score_rows)} test tracks")
            result["confusion"] = {k: m.tolist() for k, m in matrices.items()}
            section["plots"].append(uri)
        section["columns"][name] = result
    return section


def _baseline(kind: str, train_x: np.ndarray, train_y: np.ndarray, n_values: int, test_x: np.ndarray) -> np.ndarray:
    """Logistic regression on standardised MFCC statistics: (test rows, values) probabilities."""
    if kind == CATEGORICAL:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, train_y)
        out = np.zeros((len(test_x), n_values))
        out[:, model.classes_] = model.predict_proba(test_x)  # every value is on >= 2 training tracks
        return out
    present = train_y.sum(0) > 0
    out = np.zeros((len(test_x), n_values))
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=2000)))
    model.fit(train_x, train_y[:, present].astype(np.int64))
    out[:, present] = model.predict_proba(test_x)
    return out


def _confusion(truth: np.ndarray, predicted: np.ndarray, n_values: int) -> np.ndarray:
    matrix = np.zeros((n_values, n_values), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def tagging_report(section: dict) -> list[str]:
    """The report.md lines of the tagging section."""
    content = f"audio encoder run `{section['audio_run']}`" if section["audio_run"] else "summary statistics"
    lines = ["## Tagging", "",
             f"Tagger run `{section['run']}` (content: {content}) against {BASELINE}, both trained on the same "
             f"training tracks, scored on the {section['test_tracks']} test tracks of the track split (never seen "
             f"in training) that have a value in each column. ROC-AUC is one-vs-rest, averaged over the values "
             f"with both positive and negative test tracks.", ""]

    def cell(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for name, result in section["columns"].items():
        if "not_evaluated" in result:
            lines += [f"### {name}", "", f"Not evaluated: {result['not_evaluated']}", ""]
            continue
        lines += [f"### {name} ({result['kind']}, {len(result['values'])} values, {result['test_tracks']} test tracks)",
                  "", "| model | accuracy | macro-F1 | ROC-AUC |", "|---|---|---|---|"]
        lines += [f"| {model} | " + " | ".join(cell(result[model][m]) for m in METRICS) + " |"
                  for model in ("tagger", BASELINE)]
        difference = _difference(result, "macro_F1")
        if difference is not None:
            lines += ["", f"Macro-F1: the tagger {'+' if difference >= 0 else ''}{difference:.3f} against the baseline."]
        if "confusion" in result:
            lines += ["", f"![confusion matrices of {name}](tagging_confusion_{name}.png)"]
        lines.append("")
    return lines


def _difference(result: dict, metric: str) -> float | None:
    ours, theirs = result["tagger"][metric], result[BASELINE][metric]
    return None if ours is None or theirs is None else ours - theirs


def summary_line(section: dict) -> str:
    """The line ``musicray evaluate`` prints."""
    parts = []
    for name, result in section["columns"].items():
        if "not_evaluated" in result:
            parts.append(f"{name} not evaluated")
            continue
        tagger, baseline = result["tagger"]["macro_F1"], result[BASELINE]["macro_F1"]
        parts.append(f"{name} macro-F1 {tagger:.3f} (baseline {baseline:.3f}, {result['test_tracks']} test tracks)")
    return "; ".join(parts)
