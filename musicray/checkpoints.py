"""A trained model on disk: ``state_dict.pt`` (tensors only), ``config.json``, ``vocab.json``.

Loadable with ``torch.load(weights_only=True)``: no pickled Python objects. The model to serve
is ``<root>/models/<model>/<run>/model/``, the run named by ``<root>/models/<model>/LATEST``.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from models import build
from musicray import storage, workspace


@dataclass
class TrainedModel:
    name: str
    run_id: str
    model: nn.Module
    vocabulary: list[str]  # training-vocabulary track ids; position + 1 = id embedding row
    metrics: dict  # of the best epoch
    history: list[dict]  # metrics of every epoch up to the best
    sessions: str | None  # the listening log it was trained on
    audio_run: str | None = None  # the audio encoder run whose embeddings are part of its content input


MODEL_FILES = ("state_dict.pt", "config.json", "vocab.json")


def write_model_files(directory: str, name: str, model: nn.Module, vocabulary: list[str],
                      extra: dict | None = None) -> None:
    """Write the three files of a checkpoint into a local folder."""
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, "state_dict.pt"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model": name, "config": asdict(model.config), **(extra or {})}, f, indent=2)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocabulary, f)


def read_model_files(directory: str, map_location: str = "cpu") -> tuple[nn.Module, list[str], dict]:
    """Rebuild a model from a checkpoint folder (local path or URI)."""
    meta = json.loads(storage.read_text(storage.join(directory, "config.json")))
    model = build(meta["model"], **meta["config"])
    model.load_state_dict(load_tensors(storage.join(directory, "state_dict.pt"), map_location))
    vocabulary = json.loads(storage.read_text(storage.join(directory, "vocab.json")))
    return model.eval(), vocabulary, meta


def write_training_checkpoint(directory: str, name: str, model: nn.Module, vocabulary: list[str],
                              optimizer: torch.optim.Optimizer, extra: dict,
                              training_model: nn.Module | None = None) -> None:
    """A training loop's checkpoint: the model files of ``model`` (what is published), the
    optimizer state, and the raw ``training_model`` behind it when ``model`` is its average."""
    write_model_files(directory, name, model, vocabulary, extra)
    torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    if training_model is not None:
        torch.save(training_model.state_dict(), os.path.join(directory, "training_weights.pt"))


def restore_training(checkpoint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                     training_model: nn.Module | None = None) -> tuple[int, list[dict]]:
    """Load ``write_training_checkpoint``'s files back into a training loop: (next epoch, history)."""
    restored, _, meta = read_model_files(checkpoint)
    model.load_state_dict(restored.state_dict())
    if training_model is not None:
        training_model.load_state_dict(load_tensors(storage.join(checkpoint, "training_weights.pt")))
    optimizer.load_state_dict(load_tensors(storage.join(checkpoint, "optimizer.pt")))
    return meta["epoch"] + 1, meta["history"]


def load_tensors(uri: str, map_location: str = "cpu") -> dict:
    """A ``torch.save``d dict of tensors (weights, optimizer state) from a path or URI."""
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location=map_location, weights_only=True)


def newest_checkpoint(run_uri: str, required: set[str]) -> str | None:
    """The run's newest complete checkpoint folder on storage (one holding all ``required`` files), or None.

    Not ``ray.train.get_checkpoint()``: that returns what Ray Train's controller registered,
    and a checkpoint uploaded just before a worker died can be on storage yet unregistered,
    which would cost an epoch.
    """
    if not storage.exists(run_uri):
        return None
    folders: dict[str, set[str]] = {}
    for file in storage.list_files(run_uri):
        folder, _, name = file.uri.rpartition("/")
        if folder.rpartition("/")[2].startswith("checkpoint_"):
            folders.setdefault(folder, set()).add(name)
    complete = [folder for folder, names in folders.items() if required <= names]
    if not complete:
        return None
    return max(complete, key=lambda f: json.loads(storage.read_text(storage.join(f, "config.json")))["epoch"])


def load_trained(root: str, name: str, run_id: str | None = None, map_location: str = "cpu") -> TrainedModel:
    """The model of ``run_id``, or of the run named by LATEST."""
    run_id = run_id or storage.read_pointer(workspace.model_pointer(root, name))
    if run_id is None:
        raise FileNotFoundError(f"no trained {name!r} model in {root}: run `musicray train --model {name}` first")
    directory = workspace.model_dir(root, name, run_id)
    model, vocabulary, meta = read_model_files(directory, map_location)
    return TrainedModel(name, run_id, model, vocabulary, meta.get("metrics", {}), meta.get("history", []),
                        meta.get("sessions"), meta.get("audio_run"))
