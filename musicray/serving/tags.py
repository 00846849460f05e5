"""The served tracks' tags: the catalog's, and the tagger's predictions from the snapshot.

A served tag column is a tag column of the catalog (``musicray.tagging``: strings, or lists of
strings) or a column the snapshot's tagger predicts. A track's tags in a column are the catalog's
where it has any and otherwise the predicted ones (``musicray.tagging.predicted_values``), so a
filter such as ``mood=calm`` also finds the tracks the catalog leaves untagged. ``/tracks/{id}``
shows both, the predictions with their probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from models.tagger import CATEGORICAL
from musicray.serving.errors import ClientError
from musicray.snapshots import Snapshot
from musicray.tagging import MULTI_LABEL_THRESHOLD, catalog_tag_columns, load_tagger, tag_column

MAX_LISTED = 100  # known values an error names


@dataclass
class ServedTags:
    columns: list[str]  # every served tag column
    tags: dict[str, list[tuple[str, ...]]]  # column -> per track position: the values filters match
    predicted_by: dict[str, list[bool]]  # column -> per position: its values came from the tagger
    predictions: dict[str, pa.Array]  # the tagger's columns -> per position [{value, probability}]
    known: dict[str, list[str]]  # column -> every value a filter may ask for
    tagger_run: str | None

    @classmethod
    def load(cls, root: str, snapshot: Snapshot, vectors: pa.Table, track_ids: list[str],
             catalog_table: pa.Table) -> ServedTags:
        """``vectors``: the snapshot's rows in ``track_ids`` order; ``catalog_table``: ``read_catalog``'s."""
        entry = snapshot.manifest.get("tagger")
        heads = {h["column"]: h for h in load_tagger(root, entry["run"]).heads} if entry else {}
        catalog = {**catalog_tag_columns(catalog_table),  # and the tagger's columns, whatever their type
                   **{c: tag_column(catalog_table, c) for c in heads if c in catalog_table.column_names}}
        columns = sorted(set(catalog) | set(heads))
        tags, predicted_by, predictions, known = {}, {}, {}, {}
        for column in columns:
            given = catalog[column].values if column in catalog else {}
            values = [given.get(t, ()) for t in track_ids]
            from_tagger = [False] * len(track_ids)
            if column in heads:
                predictions[column] = vectors.column(entry["columns"][column]["field"]).combine_chunks()
                guesses = _predicted(predictions[column], heads[column]["kind"])
                for p, value in enumerate(values):
                    if not value:
                        values[p], from_tagger[p] = guesses[p], True
            tags[column], predicted_by[column] = values, from_tagger
            known[column] = sorted({v for row in values for v in row} | set(heads.get(column, {}).get("values", ())))
        return cls(columns, tags, predicted_by, predictions, known, entry["run"] if entry else None)

    def check(self, filters: dict[str, str]) -> None:
        """A 422 naming the column or value a filter asks for that no served track can have."""
        for column, value in filters.items():
            if column not in self.tags:
                raise ClientError(422, "unknown_tag_column",
                                  f"cannot filter by {column} {value!r}: neither the catalog nor the tagger gives "
                                  f"tracks a {column!r}; tag columns: {', '.join(self.columns) or 'none'}",
                                  column=column, columns=self.columns)
            if value not in self.known[column]:
                known = self.known[column]
                listed = ", ".join(known[:MAX_LISTED]) + (f" ... ({len(known)} in all)" if len(known) > MAX_LISTED else "")
                raise ClientError(422, f"unknown_{column}" if column == "label" else "unknown_tag",
                                  f"unknown {column} {value!r}; known {column} values: {listed}",
                                  column=column, values=known[:MAX_LISTED])

    def matches(self, position: int, filters: dict[str, str]) -> bool:
        return all(value in self.tags[column][position] for column, value in filters.items())

    def label(self, position: int) -> tuple[str | None, bool]:
        """The track's label (the catalog's, else the tagger's) and whether it is predicted."""
        if "label" not in self.tags or not self.tags["label"][position]:
            return None, False
        return self.tags["label"][position][0], self.predicted_by["label"][position]

    def describe(self, position: int) -> dict:
        """Per column the tagger predicts: the catalog's values (None: untagged) and the predictions."""
        described = {}
        for column, predictions in self.predictions.items():
            catalog = None if self.predicted_by[column][position] or not self.tags[column][position] \
                else list(self.tags[column][position])
            described[column] = {"catalog": catalog, "predicted": predictions[position].as_py()}
        return described


def _predicted(predictions: pa.Array, kind: str) -> list[tuple[str, ...]]:
    """Each row's predicted values (``musicray.tagging.predicted_values``), without a Python object per tag."""
    offsets = predictions.offsets.to_numpy()
    flat = predictions.values
    values = flat.field("value").to_numpy(zero_copy_only=False)
    if kind == CATEGORICAL:
        return [(values[start],) if end > start else () for start, end in zip(offsets[:-1], offsets[1:])]
    likely = flat.field("probability").to_numpy() >= MULTI_LABEL_THRESHOLD
    return [tuple(values[start:end][likely[start:end]]) for start, end in zip(offsets[:-1], offsets[1:])]


def request_filters(label: str | None, mood: str | None, tags: dict[str, str] | None) -> dict[str, str]:
    """A request's tag filters: ``tags`` {column: value}, with ``label`` and ``mood`` as short forms."""
    filters = dict(tags or {})
    for column, value in (("label", label), ("mood", mood)):
        if value is None:
            continue
        if filters.get(column, value) != value:
            raise ClientError(422, "conflicting_filters", f"{column} {value!r} and tags.{column} "
                                                          f"{filters[column]!r} disagree; give one")
        filters[column] = value
    return filters


def parse_tag_params(items: list[str]) -> dict[str, str]:
    """``tag=column:value`` query parameters -> {column: value}."""
    filters = {}
    for item in items:
        column, sep, value = item.partition(":")
        if not sep or not column or not value:
            raise ClientError(422, "invalid_request", f"tag: expected column:value (e.g. mood:calm), got {item!r}")
        filters[column] = value
    return filters
