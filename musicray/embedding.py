"""Every catalog track's vector under each trained model, a batch of feature rows at a time.

A track's vector is ``model.track_vectors(content, id)``: its audio-content projection (of the
summary statistics and, for a model trained with one, the audio encoder's embedding) plus the
ID embedding learned from plays, or the audio part alone for a track nobody has played yet
(cold start). The refresh job runs ``TrackEmbedder`` on an actor pool, so each actor loads the
models once and then streams batches through them. A vector depends only on the track's feature
row and the model run, so each vector row carries the ``extracted_at`` of the feature row it was
computed from: the next refresh reuses it while both are unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import torch

from models import RECOMMENDERS
from musicray import checkpoints, storage, workspace
from musicray.audio_embeddings import EmbeddingLookup
from musicray.content import CONTENT_COLUMNS, content_matrix, vocabulary_ids, vocabulary_positions
from musicray.tagging import TrackTagger

# The recommenders score ``query @ track_vectors.T``: inner product. The autoencoder's vectors are
# unit length and it recommends by latent similarity: cosine.
METRICS = {"autoencoder": "cosine"}
INPUT_COLUMNS = ["track_id", "extracted_at", *CONTENT_COLUMNS]


def audio_runs(root: str, runs: dict[str, str]) -> set[str]:
    """The audio encoder runs whose embeddings the given model runs read as content."""
    used = set()
    for name, run in runs.items():
        meta = json.loads(storage.read_text(storage.join(workspace.model_dir(root, name, run), "config.json")))
        if meta.get("audio_run"):
            used.add(meta["audio_run"])
    return used


def index_metric(model: str) -> str:
    return METRICS.get(model, "ip")


def latest_runs(root: str) -> dict[str, str]:
    """model name -> the run its LATEST names, for every model trained in the workspace."""
    runs = {name: storage.read_pointer(workspace.model_pointer(root, name)) for name in RECOMMENDERS}
    runs = {name: run for name, run in runs.items() if run}
    if not runs:
        raise FileNotFoundError(f"no trained model in {root}: run `musicray train --model all` first")
    return runs


def vector_schema(dims: dict[str, int]) -> pa.Schema:
    fields = [pa.field("track_id", pa.string(), nullable=False),
              pa.field("extracted_at", pa.timestamp("us", tz="UTC"), nullable=False)]  # of the feature row
    for name, dim in dims.items():
        fields += [pa.field(name, pa.list_(pa.float32(), dim), nullable=False),
                   pa.field(f"{name}_run", pa.dictionary(pa.int32(), pa.string()), nullable=False)]
    return pa.schema(fields)


class TrackEmbedder:
    """Feature rows (Arrow: ``INPUT_COLUMNS``) -> track_id, extracted_at, one vector per model, run ids,
    and with ``tagger_run`` each tag column's predicted tags and the tagger run (``musicray.tagging``)."""

    def __init__(self, root: str, runs: dict[str, str], device: str = "cpu", tagger_run: str | None = None):
        if device == "cpu":
            torch.set_num_threads(1)  # one actor per core
        self.device = torch.device(device)
        self.models = {name: checkpoints.load_trained(root, name, run, map_location=device)
                       for name, run in runs.items()}
        self.positions = {name: vocabulary_positions(m.vocabulary) for name, m in self.models.items()}
        # Each audio encoder run the models were trained with; every actor holds its embeddings.
        self.audio = {m.audio_run: EmbeddingLookup(root, m.audio_run) for m in self.models.values() if m.audio_run}
        self.schema = vector_schema({name: self.dim(name) for name in self.models})
        self.tagger = TrackTagger(root, tagger_run, device) if tagger_run else None
        if self.tagger:
            self.schema = pa.schema([*self.schema, *self.tagger.fields()])

    def dim(self, name: str) -> int:
        with torch.no_grad():  # the vector size is the model's, with or without a bias slot
            model = self.models[name].model
            return int(model.track_vectors(torch.zeros(1, model.config.content_dim, device=self.device),
                                           torch.zeros(1, dtype=torch.long, device=self.device)).shape[1])

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        track_ids = batch.column("track_id").to_pylist()
        statistics = content_matrix(batch)
        contents = {None: statistics, **{run: np.concatenate([statistics, lookup.rows(batch)], axis=1)
                                         for run, lookup in self.audio.items()}}
        extracted_at = batch.column("extracted_at").cast(self.schema.field("extracted_at").type).combine_chunks()
        arrays = [pa.array(track_ids, pa.string()), extracted_at]
        for name, trained in self.models.items():
            ids = vocabulary_ids(track_ids, self.positions[name]).to(self.device)
            content = torch.from_numpy(contents[trained.audio_run]).to(self.device)
            vectors = trained.model.track_vectors(content, ids).float().cpu().numpy()
            if not np.isfinite(vectors).all():
                raise ValueError(f"model {name} run {trained.run_id} gave non-finite vectors")
            flat = pa.array(vectors.reshape(-1), pa.float32())
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(track_ids), np.int32)),
                                                         pa.array([trained.run_id])))
        if self.tagger:
            arrays += self.tagger.columns(batch)
        return pa.Table.from_arrays(arrays, schema=self.schema)
