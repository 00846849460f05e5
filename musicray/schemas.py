"""Arrow schemas of the workspace tables, and the readers of the features table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from musicray import storage, workspace
from musicray.features import SCALAR_FEATURES, FeatureConfig

REQUIRED_CATALOG_COLUMNS = ("track_id", "uri")


def features_schema(config: FeatureConfig = FeatureConfig()) -> pa.Schema:
    """One row per track. ``logmel`` is the (n_mels x n_frames) crop, row-major, float16."""
    return pa.schema(
        [
            pa.field("track_id", pa.string(), nullable=False),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("sample_rate", pa.int32()),  # of the source file
            pa.field("channels", pa.int16()),
            pa.field("duration_s", pa.float32()),  # of the source file
            pa.field("crop_frames", pa.int32()),  # frames of real audio in logmel; the rest is padding
            pa.field("logmel", pa.list_(pa.float16(), config.n_mels * config.n_frames)),
            pa.field("logmel_mean", pa.list_(pa.float32(), config.n_mels)),  # per band, over real frames
            pa.field("logmel_std", pa.list_(pa.float32(), config.n_mels)),
            pa.field("mfcc_mean", pa.list_(pa.float32(), config.n_mfcc)),
            pa.field("mfcc_std", pa.list_(pa.float32(), config.n_mfcc)),
            pa.field("chroma_mean", pa.list_(pa.float32(), config.n_chroma)),
            *[pa.field(name, pa.float32()) for name in SCALAR_FEATURES],
            pa.field("extractor_version", pa.string(), nullable=False),
            pa.field("extracted_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ],
        metadata={"n_mels": str(config.n_mels), "n_frames": str(config.n_frames),
                  "sample_rate": str(config.sample_rate), "hop_length": str(config.hop_length)},
    )


ERRORS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("error_kind", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("failed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def parquet_files(directory: str) -> list[str]:
    """The complete Parquet part files of a table folder (temporaries are ignored)."""
    if not storage.exists(directory):
        return []
    return [f.uri for f in storage.list_files(directory, suffixes=(".parquet",))]


def read_features(root: str, columns: list[str] | None = None, track_ids: list[str] | None = None) -> pa.Table:
    """The features table, one row per track (only those in ``track_ids`` when given).

    Should a run have stopped between writing new rows and retiring the ones they replace,
    a track can appear twice; the newest ``extracted_at`` wins.
    """
    files = parquet_files(workspace.features_dir(root))
    wanted = None if columns is None else list(dict.fromkeys([*columns, "track_id", "extracted_at"]))
    if not files:
        schema = features_schema()
        return schema.empty_table() if wanted is None else schema.empty_table().select(wanted)
    fs, _ = storage.resolve(files[0])
    paths = [storage.resolve(f)[1] for f in files]
    # The filter is pushed into the Parquet scan, so a few tracks' log-mels cost a few reads.
    selection = None if track_ids is None else pc.field("track_id").isin(list(track_ids))
    table = pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=wanted, filter=selection)
    table = table.sort_by([("track_id", "ascending"), ("extracted_at", "descending")])
    ids = table.column("track_id")
    if len(ids) > 1:
        first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
        table = table.filter(pa.concat_arrays([pa.array([True]), first.combine_chunks()]))
    return table if columns is None else table.select(columns)


def current_feature_rows(root: str) -> pa.Table:
    """The current feature rows: track_id, content_hash, extracted_at and file of each.

    Two extractions at once can leave a track twice; the newest row is the current one (as in
    ``read_features``), and superseded rows (usually none) are left out of the snapshot.
    """
    files = parquet_files(workspace.features_dir(root))
    if not files:
        raise FileNotFoundError(f"the workspace {root} has no features: every track failed extraction")
    fs, _ = storage.resolve(files[0])
    parts = []
    for fragment in pads.dataset([storage.resolve(f)[1] for f in files], filesystem=fs, format="parquet").get_fragments():
        part = fragment.to_table(columns=["track_id", "content_hash", "extracted_at"])
        parts.append(part.append_column("file", pa.array([fragment.path] * part.num_rows, pa.string())))
    table = pa.concat_tables(parts)
    table = table.sort_by([("track_id", "ascending"), ("extracted_at", "descending")])
    ids = table.column("track_id")
    first = pa.array([True] * len(ids), pa.bool_())
    if len(ids) > 1:
        later = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).combine_chunks()
        first = pa.concat_arrays([pa.array([True]), later])
    return table.filter(first)


def rows_matching(batch: pa.Table, wanted: pa.Table) -> pa.Table:
    """The rows of ``batch`` that match a row of ``wanted`` on all of its columns, in batch order."""
    # Joined on the key columns alone: Arrow joins cannot carry the vector (fixed-size list) columns.
    keys = batch.select(wanted.column_names).append_column("row", pa.array(np.arange(batch.num_rows)))
    rows = keys.join(wanted, keys=wanted.column_names, join_type="left semi").column("row").to_numpy()
    return batch.take(np.sort(rows))
