"""The catalog: reading the input (a manifest or a prefix of audio files), and the workspace's copy of it.

A manifest (Parquet or CSV) needs ``track_id`` (unique) and ``uri`` (absolute path, ``file://``,
``s3://``, or relative to the manifest's folder); every other column is metadata and is kept.
A prefix becomes one track per audio file, ``track_id`` = its path under the prefix
without the extension. Every check runs here, before any job starts work.

The extract job keeps the catalog it read as ``<root>/catalog.parquet``; ``read_catalog``,
``track_metadata`` and ``track_labels`` are how everything else reads it. A track's label is a
non-blank value of the ``label`` column: a null, NaN or blank label means the track has none, and
it is left out of ``track_labels`` (as every track is when there is no ``label`` column).
"""

from __future__ import annotations

import io
import os
import posixpath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from musicray import storage, workspace
from musicray.audio import AUDIO_EXTENSIONS
from musicray.schemas import REQUIRED_CATALOG_COLUMNS


class CatalogError(ValueError):
    """The catalog cannot be used; the message names the input and what is wrong with it."""


def load_catalog(source: str) -> pd.DataFrame:
    """Return the catalog with absolute ``uri``s and a ``listing_hash`` column.

    ``listing_hash`` is the S3 ETag and size when the catalog is a listed S3 prefix (so
    unchanged objects can be skipped without being read), and empty otherwise.
    """
    source = str(source)
    if source.lower().endswith((".parquet", ".csv")):
        catalog = _read_manifest(source)
    else:
        catalog = _list_prefix(source)
    catalog = catalog.reset_index(drop=True)
    _validate(catalog, source)
    return catalog


def _read_manifest(manifest: str) -> pd.DataFrame:
    if not storage.exists(manifest):
        raise CatalogError(f"catalog manifest not found: {manifest}")
    data = storage.read_bytes(manifest)
    try:
        if manifest.lower().endswith(".csv"):
            table = pd.read_csv(io.BytesIO(data), dtype={"track_id": str, "uri": str}, keep_default_na=False)
        else:
            table = pq.read_table(io.BytesIO(data)).to_pandas()
    except Exception as error:
        raise CatalogError(f"cannot read catalog manifest {manifest}: {error}") from None
    missing = [c for c in REQUIRED_CATALOG_COLUMNS if c not in table.columns]
    if missing:
        raise CatalogError(f"catalog manifest {manifest} lacks required column(s) {missing}; "
                           f"it has {list(table.columns)}")
    table["track_id"] = table["track_id"].astype("string")
    table["uri"] = [_absolute_uri(u, manifest) for u in table["uri"].astype("string")]
    table["listing_hash"] = ""
    return table


def _absolute_uri(uri, manifest: str):
    if uri is pd.NA or uri is None or str(uri).strip() == "":
        return pd.NA
    uri = str(uri)
    if "://" in uri or os.path.isabs(uri):
        return storage.normalize(uri)
    base = manifest.rsplit("/", 1)[0] if storage.is_s3(manifest) else os.path.dirname(storage.normalize(manifest))
    return posixpath.join(base, uri) if storage.is_s3(manifest) else os.path.normpath(os.path.join(base, uri))


def _list_prefix(prefix: str) -> pd.DataFrame:
    if not storage.is_s3(prefix) and not os.path.isdir(storage.normalize(prefix)):
        raise CatalogError(f"catalog {prefix} is neither a .parquet/.csv manifest nor a folder")
    root = storage.normalize(prefix).rstrip("/") + "/"
    files = storage.list_files(prefix, suffixes=AUDIO_EXTENSIONS)
    if not files:
        raise CatalogError(f"catalog prefix {prefix} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    uris = [storage.normalize(f.uri) if not storage.is_s3(prefix) else f.uri for f in files]
    return pd.DataFrame({
        "track_id": [os.path.splitext(u[len(root):])[0] for u in uris],
        "uri": uris,
        "listing_hash": [f"etag:{f.etag}:{f.size}" if f.etag else "" for f in files],
    })


def _validate(catalog: pd.DataFrame, source: str) -> None:
    if catalog.empty:
        raise CatalogError(f"catalog {source} has no tracks")
    for column in REQUIRED_CATALOG_COLUMNS:
        blank = catalog[column].isna() | (catalog[column].astype("string").str.strip() == "")
        if blank.any():
            rows = list(catalog.index[blank][:5])
            raise CatalogError(f"catalog {source}: {int(blank.sum())} row(s) have an empty {column!r} "
                               f"(first rows: {rows})")
    duplicated = catalog["track_id"][catalog["track_id"].duplicated()]
    if not duplicated.empty:
        examples = sorted(set(duplicated))[:5]
        raise CatalogError(f"catalog {source}: track_id must be unique; {duplicated.nunique()} id(s) repeat, "
                           f"e.g. {examples}")


# ---------------------------------------------------------------------------------------------
# The workspace's copy


def read_catalog(root: str) -> pa.Table:
    """``<root>/catalog.parquet``: track_id, uri and every metadata column, as the last extract
    wrote it; an empty table (track_id, uri) before any extract."""
    path = workspace.catalog_file(root)
    if not storage.exists(path):
        return pa.table({"track_id": pa.array([], pa.string()), "uri": pa.array([], pa.string())})
    return pq.read_table(io.BytesIO(storage.read_bytes(path)))


def track_metadata(source: str | pa.Table) -> dict[str, dict]:
    """track_id -> its metadata columns (all but track_id and uri); a missing value is None, NaN too
    (NaN is not JSON). ``source``: a workspace root, or the table ``read_catalog`` returned."""
    table = _catalog_table(source)
    columns = [c for c in table.column_names if c not in ("track_id", "uri")]
    rows = table.select(["track_id", *columns]).to_pylist()
    return {row.pop("track_id"): {k: None if _missing(v) else v for k, v in row.items()} for row in rows}


def track_labels(source: str | pa.Table) -> dict[str, str]:
    """track_id -> label (as a string) of every track that has one (see the module docstring).
    ``source``: a workspace root, or the table ``read_catalog`` returned."""
    table = _catalog_table(source)
    if "label" not in table.column_names:
        return {}
    ids, labels = table.column("track_id").to_pylist(), table.column("label").to_pylist()
    return {t: str(label) for t, label in zip(ids, labels) if not _missing(label) and str(label).strip()}


def _catalog_table(source: str | pa.Table) -> pa.Table:
    return read_catalog(source) if isinstance(source, str) else source


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)
