"""Tags: the catalog's tag columns, what a tagger learns from them, its scores and its predictions.

A tag column is a metadata column of the catalog (``label`` by default, or any named with
``musicray train --model tagger --tags genre,mood``):

* a list-typed column (list of strings) is multi-label: any number of values per track;
* a string column any of whose values holds a ``|`` (``"piano|strings"``) is multi-label too, each
  value split on ``|`` and stripped (a CSV manifest cannot hold lists);
* any other string, boolean or integer column is categorical: one value per track;
* a null, NaN, blank string or empty list means the track has no value in that column (untagged):
  it is left out of that column's loss and scores, and its tag comes from the tagger.

Floating-point columns (tempo, duration) are not tags. A column's vocabulary is the values found on
at least ``MIN_VALUE_TRACKS`` training tracks (a value seen once can be neither learned nor
validated); a track whose only values are rarer is untagged in that column. A column with fewer
than two such values, like a catalog without the column at all, leaves nothing to learn
(``NothingToLearn``).

Predicted tags. Every refresh snapshot row holds, for each column the tagger learned, the
``TOP_TAGS`` most probable values with their probabilities (``tags_<column>``: a list of
{value, probability}, most probable first) and the ``tagger_run``. For filtering, a track's tags in a
column are the catalog's where it has any, else the predicted ones (``predicted_values``): the most
probable value of a categorical column, every value at probability >= ``MULTI_LABEL_THRESHOLD`` of a
multi-label one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from sklearn.metrics import f1_score, roc_auc_score

from models.tagger import CATEGORICAL, MULTI_LABEL, Tagger
from musicray import storage, workspace
from musicray.audio_embeddings import EmbeddingLookup
from musicray.checkpoints import read_model_files
from musicray.content import content_matrix

MODEL_NAME = "tagger"
MIN_VALUE_TRACKS = 2
TOP_TAGS = 10  # values kept per column and track in a snapshot (all of them for a smaller vocabulary)
MULTI_LABEL_THRESHOLD = 0.5
SEPARATOR = "|"
NOT_TAGS = ("track_id", "uri", "listing_hash")  # catalog columns that are never tags


class NothingToLearn(ValueError):
    """The catalog gives a tagger nothing to learn; the message says why and which columns it has."""


@dataclass
class TagColumn:
    name: str
    kind: str  # CATEGORICAL or MULTI_LABEL
    values: dict[str, tuple[str, ...]]  # track id -> its values; untagged tracks are absent


def _clean(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def _is_tag_type(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind) \
        or pa.types.is_integer(kind)


def tag_column(table: pa.Table, name: str) -> TagColumn:
    """The column ``name`` of a catalog table (``musicray.catalog.read_catalog``) as tags."""
    metadata = [c for c in table.column_names if c not in NOT_TAGS]
    if name not in metadata:
        raise NothingToLearn(f"nothing to learn: the catalog has no {name!r} column (its columns: "
                             f"{', '.join(metadata) or 'none besides track_id and uri'}); name its tag columns "
                             f"with --tags")
    kind = table.schema.field(name).type
    ids = table.column("track_id").to_pylist()
    rows = table.column(name).to_pylist()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        if not _is_tag_type(kind.value_type):
            raise ValueError(f"catalog column {name!r} holds lists of {kind.value_type}; a multi-label tag column "
                             f"holds lists of strings")
        values = {t: tuple(dict.fromkeys(v for v in map(_clean, row or []) if v)) for t, row in zip(ids, rows)}
        return TagColumn(name, MULTI_LABEL, {t: v for t, v in values.items() if v})
    if not _is_tag_type(kind):
        raise ValueError(f"catalog column {name!r} holds {kind} values; a tag column holds categories "
                         f"(strings, or lists of strings for multi-label)")
    cleaned = [_clean(v) for v in rows]
    if any(v and SEPARATOR in v for v in cleaned):
        split = {t: tuple(dict.fromkeys(p for p in map(_clean, v.split(SEPARATOR)) if p))
                 for t, v in zip(ids, cleaned) if v}
        return TagColumn(name, MULTI_LABEL, {t: v for t, v in split.items() if v})
    return TagColumn(name, CATEGORICAL, {t: (v,) for t, v in zip(ids, cleaned) if v})


def catalog_tag_columns(table: pa.Table) -> dict[str, TagColumn]:
    """The catalog's metadata columns of strings or lists of strings, as tags, by name (what serving
    filters on besides the tagger's columns; integer and boolean columns are tags only when named)."""
    columns = {}
    for name in table.column_names:
        kind = table.schema.field(name).type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            kind = kind.value_type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if name not in NOT_TAGS and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            columns[name] = tag_column(table, name)
    return columns


def vocabulary(column: TagColumn, train_ids: list[str]) -> list[str]:
    """The values found on at least ``MIN_VALUE_TRACKS`` training tracks, sorted; fewer than two
    of them is ``NothingToLearn``."""
    counts = Counter(v for t in train_ids for v in column.values.get(t, ()))
    values = sorted(v for v, n in counts.items() if n >= MIN_VALUE_TRACKS)
    if len(values) < 2:
        found = f"{len(counts)} distinct value(s)" + (f" ({', '.join(map(repr, sorted(counts)[:5]))})" if counts else "")
        raise NothingToLearn(f"nothing to learn: column {column.name!r} has {found} on the {len(train_ids)} training "
                             f"tracks, {len(values)} of them on {MIN_VALUE_TRACKS} or more; a tagger needs at least "
                             f"two values to tell apart")
    return values


def targets(column: TagColumn, values: list[str], track_ids: list[str]) -> np.ndarray:
    """Training targets of ``track_ids``: (N,) value index or -1 for a categorical column; (N, values)
    0/1 with a row of -1 for an untagged track for a multi-label one. Values outside ``values``
    do not count (a track with none of its values inside is untagged)."""
    index = {v: i for i, v in enumerate(values)}
    if column.kind == CATEGORICAL:
        return np.asarray([index.get(column.values.get(t, (None,))[0], -1) for t in track_ids], dtype=np.int64)
    out = np.zeros((len(track_ids), len(values)), dtype=np.float32)
    for row, t in enumerate(track_ids):
        known = [index[v] for v in column.values.get(t, ()) if v in index]
        if known:
            out[row, known] = 1.0
        else:
            out[row] = -1.0
    return out


def tagged(kind: str, target: np.ndarray) -> np.ndarray:
    """Which rows of a ``targets`` array have a value."""
    return target >= 0 if kind == CATEGORICAL else target[:, 0] >= 0


def tag_metrics(kind: str, truth: np.ndarray, probabilities: np.ndarray) -> dict[str, float | None]:
    """Accuracy, macro-F1 and macro ROC-AUC of predictions for tagged rows.

    ``truth``: ``targets`` rows (value indexes, or 0/1 rows for multi-label), ``probabilities``
    (rows, values). Categorical: accuracy of the most probable value; macro-F1 over the values
    present in the truth or the predictions; ROC-AUC one-vs-rest, averaged over the values that
    have both a positive and a negative row (None when none has). Multi-label: a value is
    predicted at probability >= 0.5; accuracy is the share of rows whose predicted set is exactly
    right; macro-F1 and ROC-AUC over the values, as above.
    """
    if len(truth) == 0:
        return {"accuracy": None, "macro_F1": None, "ROC_AUC": None, "tracks": 0}
    if kind == CATEGORICAL:
        predicted = probabilities.argmax(1)
        accuracy = float((predicted == truth).mean())
        f1 = float(f1_score(truth, predicted, average="macro", zero_division=0))
        indicator = np.eye(probabilities.shape[1], dtype=np.int64)[truth]
    else:
        indicator = truth.astype(np.int64)
        predicted = (probabilities >= MULTI_LABEL_THRESHOLD).astype(np.int64)
        accuracy = float((predicted == indicator).all(1).mean())
        present = (indicator.sum(0) > 0) | (predicted.sum(0) > 0)
        f1 = float(f1_score(indicator[:, present], predicted[:, present], average="macro", zero_division=0)) \
            if present.any() else 0.0
    scorable = [j for j in range(indicator.shape[1]) if 0 < indicator[:, j].sum() < len(indicator)]
    auc = float(np.mean([roc_auc_score(indicator[:, j], probabilities[:, j]) for j in scorable])) if scorable else None
    return {"accuracy": accuracy, "macro_F1": f1, "ROC_AUC": auc, "tracks": int(len(truth))}


# ---------------------------------------------------------------------------------------------
# A trained tagger


@dataclass
class TrainedTagger:
    run_id: str
    model: Tagger
    audio_run: str | None  # the audio encoder run whose embeddings end its content vectors

    @property
    def heads(self) -> list[dict]:
        return self.model.config.tags


def predict(tagger: TrainedTagger, content: torch.Tensor, batch_size: int = 65536) -> list[np.ndarray]:
    """Each head's probabilities (tracks, values) for content vectors, a batch of tracks at a time."""
    parts = [tagger.model.probabilities(content[start: start + batch_size]) for start in range(0, len(content), batch_size)]
    return [torch.cat([p[i] for p in parts]).float().cpu().numpy() for i in range(len(tagger.heads))]


def latest_tagger_run(root: str) -> str | None:
    """The tagger run ``<root>/models/tagger/LATEST`` names, or None before one is trained."""
    return storage.read_pointer(workspace.model_pointer(root, MODEL_NAME))


def load_tagger(root: str, run_id: str, device: str = "cpu") -> TrainedTagger:
    model, _, meta = read_model_files(workspace.model_dir(root, MODEL_NAME, run_id), map_location=device)
    return TrainedTagger(run_id, model.to(device), meta.get("audio_run"))


def predicted_column(column: str) -> str:
    """The snapshot column of a tag column's predicted tags."""
    return f"tags_{column}"


PREDICTED_TYPE = pa.list_(pa.struct([pa.field("value", pa.string()), pa.field("probability", pa.float32())]))


def top_tags(probabilities: np.ndarray, values: list[str], top: int = TOP_TAGS) -> list[list[dict]]:
    """Each row's ``top`` most probable values as [{value, probability}], most probable first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
    return [[{"value": values[j], "probability": float(row[j])} for j in ranked]
            for row, ranked in zip(probabilities, order)]


def predicted_values(kind: str, tags: list[dict]) -> tuple[str, ...]:
    """The values a track is taken to have from its predicted ``tags`` (see the module docstring)."""
    if not tags:
        return ()
    if kind == CATEGORICAL:
        return (tags[0]["value"],)
    return tuple(t["value"] for t in tags if t["probability"] >= MULTI_LABEL_THRESHOLD)


class TrackTagger:
    """Feature rows (Arrow, ``musicray.content.CONTENT_COLUMNS`` with track_id and extracted_at) ->
    the tagger's predicted tag columns; the refresh's ``TrackEmbedder`` adds them to each snapshot row.

    The content is rebuilt as the tagger was trained on it: the summary statistics, and the
    embeddings of the audio encoder run it recorded (not the one LATEST names now).
    """

    def __init__(self, root: str, run_id: str, device: str = "cpu"):
        self.device = device
        self.tagger = load_tagger(root, run_id, device)
        self.audio = EmbeddingLookup(root, self.tagger.audio_run) if self.tagger.audio_run else None

    def fields(self) -> list[pa.Field]:
        return [*(pa.field(predicted_column(h["column"]), PREDICTED_TYPE, nullable=False) for h in self.tagger.heads),
                pa.field("tagger_run", pa.dictionary(pa.int32(), pa.string()), nullable=False)]

    def columns(self, batch: pa.Table) -> list[pa.Array]:
        content = content_matrix(batch)
        if self.audio is not None:
            content = np.concatenate([content, self.audio.rows(batch)], axis=1)
        probabilities = self.tagger.model.probabilities(torch.from_numpy(content).to(self.device))
        arrays = []
        for head, p in zip(self.tagger.heads, probabilities):
            p = p.float().cpu().numpy()
            if not np.isfinite(p).all():
                raise ValueError(f"tagger run {self.tagger.run_id} gave non-finite probabilities")
            arrays.append(pa.array(top_tags(p, head["values"]), PREDICTED_TYPE))
        arrays.append(pa.DictionaryArray.from_arrays(pa.array(np.zeros(batch.num_rows, np.int32)),
                                                     pa.array([self.tagger.run_id])))
        return arrays


def manifest_entry(root: str, run_id: str | None) -> dict | None:
    """What a snapshot's manifest records of the tagger run whose tags it holds (None: no tagger)."""
    if run_id is None:
        return None
    tagger = load_tagger(root, run_id)
    return {"run": run_id, "audio_run": tagger.audio_run,
            "columns": {h["column"]: {"kind": h["kind"], "values": len(h["values"]), "field": predicted_column(h["column"])}
                        for h in tagger.heads}}
