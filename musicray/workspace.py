"""Every path under a workspace root, in one place (the layout is drawn in DESIGN.md).

    <root>/catalog.parquet                  the catalog's metadata as last extracted
    <root>/features/  <root>/errors/        one live row per track; the latest run's failures
    <root>/audio_embeddings/<run>/          each feature row's embedding by an audio encoder run
    <root>/models/<model>/<run>/            Ray Train checkpoints; <run>/model/ the published one
    <root>/models/<model>/LATEST            the run to serve
    <root>/models/<model>/best_config.json  the best config a search found
    <root>/tune/<search>/                   Ray Tune experiments
    <root>/embeddings/<snapshot>/           vectors, indexes, manifest.json
    <root>/embeddings/LATEST                the snapshot to serve
    <root>/reports/<run>/                   metrics.json, report.md, plots

Every function takes the root as a URI (a local path or s3://) and returns a URI.
"""

from __future__ import annotations

from musicray import storage


def catalog_file(root: str) -> str:
    """The catalog of the latest extract run, with its metadata columns (label, title, ...)."""
    return storage.join(root, "catalog.parquet")


def features_dir(root: str) -> str:
    return storage.join(root, "features")


def errors_dir(root: str) -> str:
    return storage.join(root, "errors")


def audio_embeddings_dir(root: str, run_id: str | None = None) -> str:
    """The audio encoder's embedding of every feature row, one folder per encoder run: a
    recommender keeps reading the run it was trained with after the encoder is retrained."""
    base = storage.join(root, "audio_embeddings")
    return storage.join(base, run_id) if run_id else base


def models_dir(root: str, model: str) -> str:
    """Where a model's training runs live, each in a folder named by its run id."""
    return storage.join(root, "models", model)


def run_dir(root: str, model: str, run_id: str) -> str:
    return storage.join(models_dir(root, model), run_id)


def model_dir(root: str, model: str, run_id: str) -> str:
    """A run's published (best) checkpoint: what serving, refresh and evaluation load."""
    return storage.join(run_dir(root, model, run_id), "model")


def model_pointer(root: str, model: str) -> str:
    """The text file naming the run of ``model`` to serve."""
    return storage.join(models_dir(root, model), "LATEST")


def best_config_file(root: str, model: str) -> str:
    """Where ``musicray tune`` writes the best config it found, and ``musicray train`` reads it."""
    return storage.join(models_dir(root, model), "best_config.json")


def tune_dir(root: str, search: str | None = None) -> str:
    return storage.join(root, "tune", search) if search else storage.join(root, "tune")


def embeddings_dir(root: str) -> str:
    return storage.join(root, "embeddings")


def snapshot_dir(root: str, snapshot_id: str) -> str:
    return storage.join(embeddings_dir(root), snapshot_id)


def snapshot_pointer(root: str) -> str:
    """The text file naming the snapshot to serve; written last by every publish."""
    return storage.join(embeddings_dir(root), "LATEST")


def reports_dir(root: str, *run: str) -> str:
    """``<root>/reports/<run...>``: a job's metrics.json, report.md and plots."""
    return storage.join(root, "reports", *run)
