"""The report's pictures, written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from musicray import storage  # noqa: E402

if TYPE_CHECKING:
    from musicray.features import FeatureConfig


def save(figure, uri: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    storage.write_bytes(uri, buffer.getvalue())


def hit_rates(results: dict[str, dict], models: set[str], uri: str) -> None:
    """HR@10 and HR@20 of every scorer, on all targets and on cold targets; models in colour."""
    names = list(results)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for axis, subset in zip(axes, ("all", "cold")):
        for offset, k in ((-0.2, 10), (0.2, 20)):
            values = [results[n][subset].get(f"HR@{k}", 0.0) for n in names]
            colours = ["tab:blue" if n in models else "tab:gray" for n in names]
            axis.bar(np.arange(len(names)) + offset, values, width=0.4, color=colours, alpha=0.55 if k == 10 else 1.0,
                     label=f"HR@{k}")
        axis.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
        axis.set_title(f"{subset} targets (light: HR@10, dark: HR@20; blue: models, grey: baselines)", fontsize=9)
        axis.set_ylabel("hit rate")
    save(figure, uri)


def training_curves(histories: dict[str, list[dict]], uri: str, metric: str = "val_MRR@20") -> None:
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in histories.items():
        epochs = [h["epoch"] + 1 for h in history]
        loss_axis.plot(epochs, [h["train_loss"] for h in history], marker="o", label=name)
        metric_axis.plot(epochs, [h[metric] for h in history], marker="o", label=name)
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="training loss")
    metric_axis.set(xlabel="epoch", ylabel=metric, title=f"validation {metric[4:]}")
    metric_axis.legend()
    save(figure, uri)


def track_maps(spaces: dict[str, np.ndarray], labels: list[str], uri: str) -> None:
    """Each track space projected to 2-D (PCA), one panel per space, coloured by label."""
    names = sorted(set(labels))
    colour = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    columns = min(3, len(spaces))
    rows = -(-len(spaces) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.5 * rows), squeeze=False)
    for axis, (name, vectors) in zip(axes.flat, spaces.items()):
        centred = vectors - vectors.mean(axis=0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        points = centred @ components[:2].T
        axis.scatter(points[:, 0], points[:, 1], s=8, c=[colour[label] for label in labels])
        axis.set_title(name)
        axis.set_xticks([]), axis.set_yticks([])
    for axis in list(axes.flat)[len(spaces):]:
        axis.axis("off")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colour[n], label=n) for n in names]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(names), 8))
    save(figure, uri)


def search_curves(curves: dict[str, list[tuple[int, float]]], metric: str, best: str, uri: str) -> None:
    """A hyperparameter search: ``metric`` of every trial after each epoch (trial id -> [(epochs, value)]).

    A line that ends early is a trial the scheduler stopped; the best trial is drawn thick.
    """
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for trial, curve in sorted(curves.items()):
        if not curve:
            continue
        epochs, values = zip(*curve)
        axis.plot(epochs, values, marker="o", markersize=3, linewidth=2.5 if trial == best else 1.0,
                  color="tab:red" if trial == best else None, alpha=1.0 if trial == best else 0.6,
                  label=f"{trial} (best)" if trial == best else trial)
    axis.set(xlabel="epochs trained", ylabel=metric, title=f"{metric} of every trial (early stops end early)")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.legend(fontsize=7, ncol=2)
    save(figure, uri)


def continuations(uri: str, seed_logmel, by_name: dict, config: FeatureConfig, title: str = "") -> None:
    """Log-mel spectrograms (arrays or tensors, (n_mels, T) in dB) of a seed and its continuations
    (name -> log-mel): a row per continuation showing seed + continuation, a line where the seed
    ends. ``config`` is the features' (its hop and rate give the time axis)."""
    seed = np.asarray(seed_logmel, dtype=np.float32)
    figure, axes = plt.subplots(len(by_name), 1, figsize=(11, 2.2 * len(by_name) + 0.6), squeeze=False,
                                sharex=True, constrained_layout=True)
    frame_seconds = config.hop_length / config.sample_rate
    rows = {name: np.concatenate([seed, np.asarray(c, dtype=np.float32)], axis=-1) for name, c in by_name.items()}
    top = max(float(whole.max()) for whole in rows.values())  # one colour scale for all rows
    for axis, (name, whole) in zip(axes[:, 0], rows.items()):
        image = axis.imshow(whole, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                            extent=(0, whole.shape[1] * frame_seconds, 0, whole.shape[0]))
        axis.axvline(seed.shape[-1] * frame_seconds, color="white", linestyle="--", linewidth=1)
        axis.set_ylabel("mel band")
        axis.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds (dashed line: end of the seed)")
    figure.colorbar(image, ax=axes[:, 0].tolist(), label="dB", fraction=0.02)
    if title:
        figure.suptitle(title)
    save(figure, uri)


def confusion_matrices(matrices: dict[str, np.ndarray], values: list[str], uri: str, title: str = "") -> None:
    """One panel per model: rows the true value, columns the predicted one; colour is the share of
    the row (so rare values show as clearly as common ones), the number the count of tracks."""
    figure, axes = plt.subplots(1, len(matrices), figsize=(0.5 * len(values) * len(matrices) + 3, 0.45 * len(values) + 2),
                                squeeze=False, constrained_layout=True)
    for axis, (name, matrix) in zip(axes[0], matrices.items()):
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                axis.text(column, row, str(count), ha="center", va="center", fontsize=8,
                          color="white" if shares[row, column] > 0.5 else "black")
        axis.set_xticks(range(len(values)), values, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(range(len(values)), values, fontsize=8)
        axis.set(xlabel="predicted", ylabel="true", title=name)
        axis.title.set_fontsize(9)
    if title:
        figure.suptitle(title)
    save(figure, uri)
