"""The nearest-neighbour index over one model's track vectors: query by vector or by track id.

Why Spotify's voyager, of faiss-cpu, hnswlib and voyager (all checked on PyPI for Python 3.11):

- It installs as one 0.3 MB wheel whose only dependency is numpy; hnswlib ships only a source
  tarball (a C++ compiler at install time on every node), faiss-cpu is a ~30 MB wheel.
- It serialises to and from ``bytes`` / file-like objects, so an index lives on S3 through
  ``musicray.storage`` with no local temp files; hnswlib saves only to a local path.
- Inner-product and cosine spaces (the recommenders score ``query @ track_vectors.T``, the
  autoencoder's vectors are unit length), multi-threaded batch queries that release the GIL, and
  ``get_vector`` for query-by-track. It is HNSW built for exactly this job (Spotify's track
  similarity), with E4M3 storage when a catalog of 100M tracks has to fit in serving memory.
- faiss would win for catalogs that need product quantisation or GPU search; nothing here does,
  and the wrapper below keeps that swap to this one file.

HNSW's recall on inner product falls when vector norms vary a lot, so a snapshot measures this
index's recall@10 against exact search on a sample of its own vectors (``sample_recall``) and
records it in the manifest rather than assuming it.

File format (``to_bytes``): a magic line, a JSON header, the track ids as an Arrow IPC stream,
then voyager's own bytes. Voyager's integer id of a track is its position in ``track_ids``.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pyarrow as pa
from voyager import Index, Space

from musicray import storage

MAGIC = b"MUSICRAY-INDEX\n"
FORMAT = 1
SPACES = {"ip": Space.InnerProduct, "cosine": Space.Cosine}


class IndexInputError(ValueError):
    """Bad input to the index; the message names it."""


class TrackIndex:
    def __init__(self, index: Index, track_ids: list[str], metric: str, ef: int):
        self._index = index
        self.track_ids = track_ids
        self.metric = metric
        self.ef = ef  # search depth of a query; higher = better recall, slower
        self.position = {track_id: i for i, track_id in enumerate(track_ids)}

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def build(cls, track_ids: list[str], vectors: np.ndarray, metric: str = "ip", *, M: int = 16,
              ef_construction: int = 400, ef: int = 200, num_threads: int = -1, seed: int = 1) -> "TrackIndex":
        """An index over ``vectors`` (N, D), row i belonging to ``track_ids[i]``."""
        if metric not in SPACES:
            raise IndexInputError(f"unknown metric {metric!r}; valid metrics: {', '.join(SPACES)}")
        track_ids = [str(t) for t in track_ids]
        vectors = _matrix(vectors, "vectors")
        if len(track_ids) != len(vectors):
            raise IndexInputError(f"{len(track_ids)} track ids for {len(vectors)} vectors: they must pair up")
        if len(set(track_ids)) != len(track_ids):
            seen, dupes = set(), set()
            for t in track_ids:
                (dupes if t in seen else seen).add(t)
            raise IndexInputError(f"duplicate track ids in the index input: {sorted(dupes)[:5]}")
        if metric == "cosine" and (np.linalg.norm(vectors, axis=1) == 0).any():
            raise IndexInputError("a zero vector has no direction: cosine cannot index it")
        if ef < 1 or M < 2 or ef_construction < 1:
            raise IndexInputError(f"index parameters must be positive (M={M}, ef={ef}, ef_construction={ef_construction})")
        index = Index(SPACES[metric], num_dimensions=vectors.shape[1], M=M, ef_construction=ef_construction,
                      random_seed=seed, max_elements=len(vectors))
        index.add_items(vectors, ids=np.arange(len(vectors), dtype=np.uint64), num_threads=num_threads)
        return cls(index, track_ids, metric, ef)

    # -- querying ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.track_ids)

    @property
    def dim(self) -> int:
        return self._index.num_dimensions

    def query(self, vectors: np.ndarray, k: int = 10, num_threads: int = -1) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` best tracks for each query vector (Q, D) or (D,), best first, with their scores.

        A score is the inner product (``ip``) or the cosine similarity (``cosine``).
        """
        single = np.ndim(vectors) == 1
        queries = _matrix(np.atleast_2d(vectors), "query vectors")
        if queries.shape[1] != self.dim:
            raise IndexInputError(f"query vectors have {queries.shape[1]} dimensions; this index has {self.dim}")
        positions, scores = self._search(queries, k, num_threads)
        ids = [[self.track_ids[p] for p in row] for row in positions]
        return (ids[0], scores[0]) if single else (ids, scores)

    def neighbours(self, track_id: str, k: int = 10) -> tuple[list[str], np.ndarray]:
        """The ``k`` tracks nearest to ``track_id`` (itself left out), best first, with their scores."""
        if k < 1:
            raise IndexInputError(f"k must be >= 1, got {k}")
        position = self._position(track_id)
        positions, scores = self._search(self._index.get_vector(position)[None, :], k + 1, 1)
        keep = positions[0] != position
        return [self.track_ids[p] for p in positions[0][keep][:k]], scores[0][keep][:k]

    def vector(self, track_id: str) -> np.ndarray:
        """The stored vector of a track (unit length under ``cosine``)."""
        return np.asarray(self._index.get_vector(self._position(track_id)), dtype=np.float32)

    def _position(self, track_id: str) -> int:
        if track_id not in self.position:
            raise KeyError(f"track {track_id!r} is not in this index ({len(self)} tracks)")
        return self.position[track_id]

    def _search(self, queries: np.ndarray, k: int, num_threads: int) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise IndexInputError(f"k must be >= 1, got {k}")
        k = min(k, len(self))
        positions, distances = self._index.query(queries, k=k, num_threads=num_threads, query_ef=max(self.ef, k))
        # voyager's distance is 1 - inner product (ip) or 1 - cosine similarity (cosine).
        return positions.astype(np.int64), (1.0 - distances).astype(np.float32)

    # -- quality ----------------------------------------------------------------------------

    def sample_recall(self, vectors: np.ndarray, k: int = 10, sample: int = 200, seed: int = 0) -> float:
        """Recall@k of this index against exact search, the queries being a sample of ``vectors``.

        ``vectors`` are the rows the index was built from, in ``track_ids`` order.
        """
        vectors = _matrix(vectors, "vectors")
        k = min(k, len(self))
        rows = np.random.default_rng(seed).choice(len(vectors), size=min(sample, len(vectors)), replace=False)
        found, _ = self._search(vectors[rows], k, -1)
        exact = exact_top_k(vectors, vectors[rows], k, self.metric)
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)]))

    def stats(self) -> dict:
        return {"tracks": len(self), "dim": self.dim, "metric": self.metric, "M": self._index.M,
                "ef_construction": self._index.ef_construction, "ef": self.ef}

    # -- storage ----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        header = json.dumps({"format": FORMAT, "metric": self.metric, "ef": self.ef, "tracks": len(self),
                             "dim": self.dim}).encode()
        sink = pa.BufferOutputStream()
        table = pa.table({"track_id": pa.array(self.track_ids, pa.string())})
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        ids = sink.getvalue().to_pybytes()
        return b"".join([MAGIC, struct.pack("<QQ", len(header), len(ids)), header, ids, self._index.as_bytes()])

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "index") -> "TrackIndex":
        if not data.startswith(MAGIC):
            raise IndexInputError(f"{name} is not a musicray index (bad magic bytes)")
        try:
            start = len(MAGIC) + 16
            header_len, ids_len = struct.unpack("<QQ", data[len(MAGIC): start])
            header = json.loads(data[start: start + header_len])
            ids = pa.ipc.open_stream(data[start + header_len: start + header_len + ids_len]).read_all()
            index = Index.load(io.BytesIO(data[start + header_len + ids_len:]))
        except Exception as error:
            raise IndexInputError(f"{name} is truncated or corrupt: {error}") from None
        if header.get("format") != FORMAT:
            raise IndexInputError(f"{name} has index format {header.get('format')}; this musicray reads {FORMAT}")
        track_ids = ids.column("track_id").to_pylist()
        if len(track_ids) != header["tracks"] or index.num_elements != len(track_ids):
            raise IndexInputError(f"{name} holds {index.num_elements} vectors for {len(track_ids)} track ids")
        return cls(index, track_ids, header["metric"], header["ef"])

    def save(self, uri: str) -> None:
        storage.write_bytes(uri, self.to_bytes())

    @classmethod
    def load(cls, uri: str) -> "TrackIndex":
        if not storage.exists(uri):
            raise FileNotFoundError(f"no index at {uri}")
        return cls.from_bytes(storage.read_bytes(uri), name=uri)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Row positions of the exact top ``k`` of ``vectors`` for each query, best first."""
    if metric == "cosine":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def _matrix(vectors, name: str) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise IndexInputError(f"{name} must be a non-empty 2-D array (rows, dims); got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise IndexInputError(f"{name} must be numeric; got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not array.flags.writeable:  # voyager refuses read-only buffers (e.g. zero-copy from Arrow)
        array = array.copy()
    if not np.isfinite(array).all():
        raise IndexInputError(f"{name} contain NaN or infinite values (rows {np.where(~np.isfinite(array).all(1))[0][:5].tolist()})")
    return array
