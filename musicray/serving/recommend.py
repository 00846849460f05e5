"""Recommendation from a snapshot: the served state, checking a request, batched answers, similar tracks.

The state is the snapshot ``<root>/embeddings/LATEST`` names, its vectors and indexes, and the
model runs *the snapshot was embedded with* (from its manifest, not the models' own LATEST: a query
tower must meet the track vectors of its own weights; a newly trained model goes live with the next
refresh). ``RecommendService`` is what the recommend app's routes call; the request and response
bodies here are the app's JSON schemas (the OpenAPI docs).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from musicray import catalog, checkpoints, snapshots, storage, workspace
from musicray.checkpoints import TrainedModel
from musicray.index import TrackIndex
from musicray.scoring import session_queries
from musicray.sessions import MAX_PREFIX, EncodedHistories, encode_histories, pad
from musicray.serving.errors import ClientError, unknown_tracks
from musicray.serving.follower import DEFAULT_POLL_SECONDS, Follower
from musicray.serving.tags import ServedTags, request_filters

MAX_K = 100
MAX_HISTORY = 500  # tracks a request may send; the models read the last MAX_PREFIX of them


class Context(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hour: int | None = Field(None, ge=0, le=23, description="hour of day (0-23) of the play to recommend for")
    weekday: int | None = Field(None, ge=0, le=6, description="day of week, 0 = Monday")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(None, description="echoed back; the models describe a listener by their history")
    history: list[str] = Field(..., min_length=1, max_length=MAX_HISTORY,
                               description="track ids played, oldest first (the last 50 are read)")
    context: Context | None = None
    k: int = Field(10, ge=1, le=MAX_K, description="how many tracks to return")
    model: str | None = Field(None, description="lstm, rnn, dnn or autoencoder (default: the app's)")
    label: str | None = Field(None, description="only tracks with this label: the catalog's, or the tagger's "
                                                "prediction for a track the catalog leaves unlabelled")
    mood: str | None = Field(None, description="only tracks with this mood (catalog, else predicted, as label)")
    tags: dict[str, str] | None = Field(None, description="only tracks with these tags, {column: value}, e.g. "
                                                          "{\"instrument\": \"piano\"} (catalog, else predicted)")
    exclude_played: bool = Field(True, description="leave the history's own tracks out")


class RankedTrack(BaseModel):
    track_id: str
    score: float = Field(description="similarity of the session's query and the track (inner product; cosine "
                                     "for the autoencoder)")
    cold: bool = Field(description="nobody had played the track when the model trained: ranked from its audio")
    label: str | None = None
    label_predicted: bool = Field(False, description="the catalog gives the track no label: label is the tagger's")
    closest_in_history: str = Field(description="the history track most like this one: why it was recommended")


class Recommendation(BaseModel):
    user_id: str | None
    model: str
    run: str
    snapshot: str
    tracks: list[RankedTrack]


class Neighbours(BaseModel):
    track_id: str
    model: str
    snapshot: str
    tracks: list[dict]


@dataclass
class ServedModel:
    trained: TrainedModel
    index: TrackIndex
    vectors: torch.Tensor  # (N, dim) the snapshot's track vectors, rows in ``RecommendState.track_ids`` order
    played: np.ndarray  # (N,) bool: the track is in the model's training vocabulary
    metric: str


@dataclass
class RecommendState:
    root: str
    snapshot: snapshots.Snapshot
    models: dict[str, ServedModel]
    track_ids: list[str]
    position: dict[str, int]
    metadata: dict[str, dict]  # track id -> catalog columns (label, title, ...); uri left out
    device: torch.device
    tags: ServedTags  # each track's tags per column, the catalog's or else the tagger's
    loaded_at: float = field(default_factory=time.time)

    def version(self) -> dict:
        return {"snapshot": self.snapshot.id, "snapshot_created_at": self.snapshot.manifest.get("created_at"),
                "tracks": len(self.track_ids),
                "models": {name: served.trained.run_id for name, served in self.models.items()},
                "tagger": self.tags.tagger_run}


def snapshot_pointer(root: str) -> str | None:
    return storage.read_pointer(workspace.snapshot_pointer(root))


def load_recommend_state(root: str, snapshot_id: str | None, device: str = "cpu") -> RecommendState:
    """Everything one snapshot needs to answer requests, loaded up front."""
    if snapshot_id is None:
        raise FileNotFoundError(f"no embedding snapshot in {root}: run `musicray refresh` first")
    snapshot = snapshots.open_snapshot(root, snapshot_id)
    table = snapshot.vectors()
    track_ids = table.column("track_id").to_pylist()
    position = {t: i for i, t in enumerate(track_ids)}
    models = {}
    for name, info in snapshot.manifest["models"].items():
        trained = checkpoints.load_trained(root, name, info["run"], map_location=device)
        column = table.column(name).combine_chunks()
        vectors = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
        vocabulary = set(trained.vocabulary)
        models[name] = ServedModel(trained, snapshot.index(name), torch.from_numpy(vectors.copy()).to(device),
                                   np.array([t in vocabulary for t in track_ids]), info.get("metric", "ip"))
    catalog_table = catalog.read_catalog(root)  # one read for the metadata and the tags
    metadata = {t: columns for t, columns in catalog.track_metadata(catalog_table).items() if t in position}
    tags = ServedTags.load(root, snapshot, table, track_ids, catalog_table)
    return RecommendState(root, snapshot, models, track_ids, position, metadata, torch.device(device), tags)


def check_recommend_request(state: RecommendState, request: RecommendRequest, default_model: str) -> str:
    """The model the request is for; a 4xx ClientError for anything the state cannot answer."""
    name = request.model or (default_model if default_model in state.models else next(iter(state.models)))
    _check_model(state, name)
    unknown = sorted({t for t in request.history if t not in state.position})
    if unknown:
        raise unknown_tracks(unknown, f"snapshot {state.snapshot.id}")
    state.tags.check(request_filters(request.label, request.mood, request.tags))
    return name


def _check_model(state: RecommendState, name: str) -> None:
    if name not in state.models:
        raise ClientError(422, "unknown_model", f"unknown model {name!r}; this snapshot serves "
                                                f"{', '.join(state.models)}", models=list(state.models))


@torch.no_grad()
def recommend_batch(items: list[tuple[RecommendState, str, RecommendRequest]]) -> list[Recommendation]:
    """Answer checked requests; those of the same state and model share one forward pass.

    ``items`` are (state, model name, request) as ``check_recommend_request`` passed them.
    """
    results: list[Recommendation | None] = [None] * len(items)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (state, name, _) in enumerate(items):
        groups.setdefault((id(state), name), []).append(i)
    for rows in groups.values():
        state, name, _ = items[rows[0]]
        requests = [items[i][2] for i in rows]
        for i, answer in zip(rows, _recommend_group(state, name, requests)):
            results[i] = answer
    return results


def _recommend_group(state: RecommendState, name: str, requests: list[RecommendRequest]) -> list[Recommendation]:
    served = state.models[name]
    histories = [[state.position[t] for t in r.history[-MAX_PREFIX:]] for r in requests]
    encoded = request_histories(histories, requests).to(state.device)
    lengths, history_vectors = encoded.lengths, served.vectors[encoded.items]
    queries = session_queries(served.trained.model, served.vectors, encoded).float()
    if served.metric == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=-1)
    queries = queries.cpu().numpy()
    excluded = [set(h) if r.exclude_played else set() for h, r in zip(histories, requests)]
    filters = [request_filters(r.label, r.mood, r.tags) for r in requests]
    fetches = [_first_fetch(len(state.track_ids), r.k, len(e), bool(f)) for r, e, f in zip(requests, excluded, filters)]
    found = served.index.query(queries, k=max(fetches), num_threads=1)  # one index call for the batch
    answers = []
    for row, request in enumerate(requests):
        positions, scores = _top_tracks(state, served, queries[row], request.k, excluded[row], filters[row],
                                        fetches[row], (found[0][row], found[1][row]))
        # Why: the history track whose vector is closest to each recommended track's.
        closest = (history_vectors[row, : lengths[row]] @ served.vectors[positions].T).argmax(0).tolist()
        answers.append(Recommendation(
            user_id=request.user_id, model=name, run=served.trained.run_id, snapshot=state.snapshot.id,
            tracks=[RankedTrack(track_id=state.track_ids[p], score=float(s), cold=not served.played[p],
                                **_label(state, p), closest_in_history=state.track_ids[histories[row][c]])
                    for p, s, c in zip(positions, scores, closest)]))
    return answers


def request_histories(histories: list[list[int]], requests: list[RecommendRequest]) -> EncodedHistories:
    """Requests' histories (catalog positions) as the models read them, as training and evaluation do.

    The request's context is that of the play asked for; a history's own plays carry no times,
    so ``encode_histories`` takes them to be at that time (a history is the listener's current session).
    """
    items = torch.from_numpy(pad(histories, max(map(len, histories))))
    return encode_histories(items, next_hour=torch.tensor([_context(r, "hour") for r in requests]),
                            next_weekday=torch.tensor([_context(r, "weekday") for r in requests]))


def _context(request: RecommendRequest, field_name: str) -> int:
    value = getattr(request.context, field_name) if request.context else None
    return -1 if value is None else value  # -1 embeds to zero: "unknown"


def _first_fetch(total: int, k: int, excluded: int, filtered: bool) -> int:
    """How many results to ask the index for so that k are likely left after filtering."""
    return min(total, 4 * (k + excluded)) if filtered else min(total, k + excluded)


def _label(state: RecommendState, position: int) -> dict:
    label, predicted = state.tags.label(position)
    return {"label": label, "label_predicted": predicted}


def _top_tracks(state: RecommendState, served: ServedModel, query: np.ndarray, k: int, excluded: set[int],
                filters: dict[str, str], fetch: int, found: tuple[list[str], np.ndarray]) -> tuple[list[int], list[float]]:
    """The k best catalog positions for a query, skipping ``excluded`` and tracks without the ``filters``' tags.

    ``found`` is the index's answer for the ``fetch`` best (or more); when filtering leaves fewer
    than k, the index is asked again for twice as many, until the whole catalog was asked.
    """
    total = len(state.track_ids)
    ids, scores = found
    while True:
        kept = [(state.position[t], float(s)) for t, s in zip(ids, scores)
                if state.position[t] not in excluded and state.tags.matches(state.position[t], filters)]
        if len(kept) >= k or len(ids) >= total:
            kept = kept[:k]
            return [p for p, _ in kept], [s for _, s in kept]
        fetch = min(total, 2 * max(fetch, len(ids)))
        ids, scores = served.index.query(query, k=fetch, num_threads=1)


def similar_tracks(state: RecommendState, track_id: str, k: int, model: str,
                   filters: dict[str, str] | None = None) -> Neighbours:
    """The k tracks nearest to ``track_id`` in a model's index; with ``filters``, only tracks with those tags
    (the index is asked for more until k are found or the whole catalog was asked)."""
    _check_model(state, model)
    if track_id not in state.position:
        raise unknown_tracks([track_id], f"snapshot {state.snapshot.id}")
    filters = filters or {}
    state.tags.check(filters)
    served, others = state.models[model], len(state.track_ids) - 1
    fetch = min(others, 4 * k) if filters else min(others, k)
    while True:
        ids, scores = served.index.neighbours(track_id, k=max(fetch, 1))
        kept = [(t, s) for t, s in zip(ids, scores) if state.tags.matches(state.position[t], filters)]
        if len(kept) >= k or fetch >= others:
            break
        fetch = min(others, 2 * fetch)
    return Neighbours(track_id=track_id, model=model, snapshot=state.snapshot.id, tracks=[
        {"track_id": t, "score": float(s), "cold": not served.played[state.position[t]],
         **_label(state, state.position[t])} for t, s in kept[:k]])


def track_info(state: RecommendState, track_id: str) -> dict:
    if track_id not in state.position:
        raise unknown_tracks([track_id], f"snapshot {state.snapshot.id}")
    p = state.position[track_id]
    return {"track_id": track_id, "snapshot": state.snapshot.id, **state.metadata.get(track_id, {}),
            "played_in_training": {name: bool(served.played[p]) for name, served in state.models.items()},
            "tags": state.tags.describe(p), "tagger_run": state.tags.tagger_run}


Forward = Callable[[tuple[RecommendState, str, RecommendRequest]], Awaitable[Recommendation]]


class RecommendService:
    """What the recommend app's routes call. ``forward`` answers one checked request: by default
    directly, one forward pass per request; Ray Serve passes its ``@serve.batch`` method."""

    def __init__(self, root: str, *, device: str = "cpu", poll_seconds: float = DEFAULT_POLL_SECONDS,
                 default_model: str = "lstm", forward: Forward | None = None):
        self.root = storage.normalize(root)
        self.default_model = default_model
        self.follower = Follower("recommend", lambda: snapshot_pointer(self.root),
                                 lambda sid: load_recommend_state(self.root, sid, device), poll_seconds)
        self.forward = forward or self.forward_one

    @staticmethod
    async def forward_one(item: tuple[RecommendState, str, RecommendRequest]) -> Recommendation:
        return recommend_batch([item])[0]

    async def recommend(self, request: RecommendRequest) -> Recommendation:
        state = self.follower.state  # read once: this request is answered from this state only
        name = check_recommend_request(state, request, self.default_model)
        return await self.forward((state, name, request))

    def similar(self, track_id: str, k: int, model: str | None, filters: dict[str, str] | None = None) -> Neighbours:
        state = self.follower.state
        # "More like this" is a question about sound: the autoencoder's space when it is served.
        return similar_tracks(state, track_id, k, model or ("autoencoder" if "autoencoder" in state.models
                                                             else self.default_model), filters)

    def track(self, track_id: str) -> dict:
        return track_info(self.follower.state, track_id)

    def version(self) -> dict:
        return {**self.follower.state.version(), "loaded_at": self.follower.loaded_at, "swaps": self.follower.swaps}

    def health(self) -> dict:
        return {"status": "ok" if self.follower.alive else "stale", "snapshot": self.follower.state.snapshot.id,
                "poll_seconds": self.follower.poll_seconds, "last_reload_error": self.follower.last_error}
