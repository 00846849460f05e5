"""Building tiny workspaces for tests: model checkpoints in the format training writes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from models import build
from models.modules import fit_standardizers
from musicray import checkpoints, storage, workspace
from musicray.content import TrackCatalog

MODELS = ("lstm", "autoencoder")


def publish_model(root: str, name: str, run: str, model: nn.Module, vocabulary: list[str]) -> None:
    """Write a model's files under ``<root>/models/<name>/<run>/model/`` and point LATEST at the run."""
    with tempfile.TemporaryDirectory() as local:  # written locally, then copied as training uploads
        checkpoints.write_model_files(local, name, model.eval(), vocabulary)
        for path in Path(local).iterdir():
            storage.write_bytes(storage.join(workspace.model_dir(root, name, run), path.name), path.read_bytes())
    storage.publish(workspace.model_pointer(root, name), run)


def publish_models(root: str, vocabulary: list[str], run: str = "r1", models=MODELS) -> dict[str, str]:
    """Recommender checkpoints with untrained weights (refresh and serving only embed and query)."""
    content = TrackCatalog.from_workspace(root).content
    runs = {}
    for name in models:
        model = build(name, content_dim=content.shape[1], n_ids=len(vocabulary), dim=16)
        fit_standardizers(model, content)
        runs[name] = f"{name}-{run}"
        publish_model(root, name, runs[name], model, vocabulary)
    return runs
