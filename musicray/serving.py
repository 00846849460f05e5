"""The serving endpoints without Ray: served state, request models, the two FastAPI apps.

``ray_jobs/serve.py`` wraps these apps in Ray Serve deployments (replicas, autoscaling,
``@serve.batch``); ``benchmarks/serve.py`` runs the very same app in one uvicorn process.

Served state. A replica holds one immutable state object: for recommendation the snapshot that
``<root>/embeddings/LATEST`` names, its vectors and indexes, and the model runs *the snapshot was
embedded with* (from its manifest, not the models' own LATEST: a query tower must meet the track
vectors of its own weights; a newly trained model goes live with the next refresh). For generation
the run ``<root>/models/generator/LATEST`` names. ``Follower`` re-reads the pointers every few
seconds; when they change it loads a complete new state beside the old one and then replaces the
reference in one assignment. A request reads the reference once and uses only that object, so
requests in flight finish on the old state and no request ever sees half of each.

Errors. A client mistake is a 4xx with a JSON body ``{"error": kind, "detail": message, ...}``:
422 for a body that does not validate (malformed JSON included), 404 for an unknown track id
(named), 413 for an upload over the cap, 415 for an upload that is not audio.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import pyarrow.parquet as pq
import torch
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from musicray import checkpoints, snapshots, storage, workspace
from musicray.checkpoints import TrainedModel
from musicray.evaluation import MAX_PREFIX
from musicray.audio import encode_audio
from musicray.generation import MODEL_NAME as GENERATOR, TrainedGenerator, load_generator
from musicray.index import TrackIndex
from musicray.schemas import read_features
from musicray.scoring import session_queries

log = logging.getLogger("musicray.serving")

MAX_K = 100
MAX_HISTORY = 500  # tracks a request may send; the models read the last MAX_PREFIX of them
MAX_GENERATE_SECONDS = 30.0  # the generate command's default cap
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # a 10 MB seed clip is a minute of FLAC: plenty for a 5 s seed
DEFAULT_POLL_SECONDS = 30.0
AUDIO_MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}
VERSION = "0.1.0"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now, for a local server."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ClientError(Exception):
    """A request the client has to change: becomes a 4xx JSON response."""

    def __init__(self, status: int, kind: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.kind, self.detail, self.extra = status, kind, detail, extra


def unknown_tracks(track_ids: list[str], where: str) -> ClientError:
    return ClientError(404, "unknown_track", f"unknown track id(s) {', '.join(map(repr, track_ids))}: "
                                             f"not in {where}", track_ids=track_ids)


# ---------------------------------------------------------------------------------------------
# Request and response bodies (their JSON schemas are the OpenAPI docs)


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
    label: str | None = Field(None, description="only tracks with this catalog label (genre / mood)")
    exclude_played: bool = Field(True, description="leave the history's own tracks out")


class RankedTrack(BaseModel):
    track_id: str
    score: float = Field(description="similarity of the session's query and the track (inner product; cosine "
                                     "for the autoencoder)")
    cold: bool = Field(description="nobody had played the track when the model trained: ranked from its audio")
    label: str | None = None
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


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed_track_id: str | None = Field(None, description="a catalog track whose opening is the seed (JSON body); "
                                                        "or upload a clip as multipart field seed_audio")
    seconds: float = Field(10.0, gt=0, le=MAX_GENERATE_SECONDS, description="length of the continuation")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed: the same seed gives the same bytes")
    temperature: float = Field(1.0, ge=0, le=10, description="sampling temperature (0: most likely)")
    format: Literal["wav", "flac", "ogg"] = "wav"
    label: str | None = Field(None, description="style label to condition on")
    include_seed: bool = Field(False, description="start the audio with the vocoded seed")


# ---------------------------------------------------------------------------------------------
# Following the LATEST pointers

State = TypeVar("State")


class Follower(Generic[State]):
    """Holds the served state and swaps it atomically when the pointers it follows change.

    ``read_pointers()`` returns a small comparable value (ids); ``load(pointers)`` builds a
    complete state for it. A failed load keeps the old state and is retried at the next poll.
    """

    def __init__(self, name: str, read_pointers: Callable[[], Any], load: Callable[[Any], State],
                 poll_seconds: float = DEFAULT_POLL_SECONDS):
        self.name, self.read_pointers, self.load = name, read_pointers, load
        self.poll_seconds = poll_seconds
        self.pointers = read_pointers()
        self.state: State = load(self.pointers)
        self.loaded_at = time.time()
        self.swaps = 0
        self.last_error: str | None = None
        self._reload = threading.Lock()  # the poller and reconfigure() never load at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"{name}-follower", daemon=True)
        self._thread.start()

    def refresh(self) -> bool:
        """Load and swap in a new state if the pointers moved; returns whether it swapped."""
        with self._reload:
            pointers = self.read_pointers()
            if pointers == self.pointers:
                return False
            state = self.load(pointers)  # fully built before anyone can see it
            self.state, self.pointers = state, pointers  # requests read .state once: old or new
            self.loaded_at, self.swaps = time.time(), self.swaps + 1
            log.info("%s now serves %s", self.name, pointers)
            return True

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
                self.last_error = None
            except Exception as error:  # keep serving the old state; say why in /healthz
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("%s keeps serving %s: the new state did not load: %s", self.name, self.pointers,
                            self.last_error)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------------------------------
# Recommendation


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
    labels: np.ndarray  # (N,) object: each track's label or None
    label_set: frozenset[str]
    device: torch.device
    loaded_at: float = field(default_factory=time.time)

    def version(self) -> dict:
        return {"snapshot": self.snapshot.id, "snapshot_created_at": self.snapshot.manifest.get("created_at"),
                "tracks": len(self.track_ids),
                "models": {name: served.trained.run_id for name, served in self.models.items()}}


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
    metadata = catalog_metadata(root, position)
    labels = [metadata.get(t, {}).get("label") for t in track_ids]
    labels = np.array([None if label is None else str(label) for label in labels], dtype=object)
    return RecommendState(root, snapshot, models, track_ids, position, metadata, labels,
                          frozenset(label for label in labels if label is not None), torch.device(device))


def catalog_metadata(root: str, position: dict[str, int]) -> dict[str, dict]:
    """The catalog's own columns of each served track (empty when the catalog has none)."""
    if not storage.exists(workspace.catalog_file(root)):
        return {}
    table = pq.read_table(io.BytesIO(storage.read_bytes(workspace.catalog_file(root))))
    columns = [c for c in table.column_names if c not in ("track_id", "uri")]
    rows = table.select(["track_id", *columns]).to_pylist()
    # NaN is not JSON: a missing float is null, as a missing string is.
    return {row.pop("track_id"): {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
            for row in rows if row["track_id"] in position}


def check_recommend_request(state: RecommendState, request: RecommendRequest, default_model: str) -> str:
    """The model the request is for; a 4xx ClientError for anything the state cannot answer."""
    name = request.model or (default_model if default_model in state.models else next(iter(state.models)))
    if name not in state.models:
        raise ClientError(422, "unknown_model", f"unknown model {name!r}; this snapshot serves "
                                               f"{', '.join(state.models)}", models=list(state.models))
    unknown = sorted({t for t in request.history if t not in state.position})
    if unknown:
        raise unknown_tracks(unknown, f"snapshot {state.snapshot.id}")
    if request.label is not None and request.label not in state.label_set:
        known = sorted(state.label_set)
        raise ClientError(422, "unknown_label", f"unknown label {request.label!r}; the catalog's labels: "
                                                f"{', '.join(known) or 'none (no label column)'}", labels=known)
    return name


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
    lengths = torch.tensor([len(h) for h in histories], device=state.device)
    items = torch.zeros(len(histories), int(lengths.max()), dtype=torch.long, device=state.device)
    for row, history in enumerate(histories):
        items[row, : len(history)] = torch.tensor(history, device=state.device)
    # The request gives the context of the play to come; a history's own plays carry no times, so
    # each step is taken to be in that same hour (a history is the listener's current session).
    hours = torch.tensor([_context(r, "hour") for r in requests], device=state.device)[:, None].expand_as(items)
    weekdays = torch.tensor([_context(r, "weekday") for r in requests], device=state.device)[:, None].expand_as(items)
    history_vectors = served.vectors[items]
    queries = session_queries(served.trained.model, history_vectors, lengths, hours, weekdays).float()
    if served.metric == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=-1)
    queries = queries.cpu().numpy()
    excluded = [set(h) if r.exclude_played else set() for h, r in zip(histories, requests)]
    fetches = [_first_fetch(len(state.track_ids), r.k, len(e), r.label) for r, e in zip(requests, excluded)]
    found = served.index.query(queries, k=max(fetches), num_threads=1)  # one index call for the batch
    answers = []
    for row, request in enumerate(requests):
        positions, scores = _top_tracks(state, served, queries[row], request.k, excluded[row], request.label,
                                        fetches[row], (found[0][row], found[1][row]))
        # Why: the history track whose vector is closest to each recommended track's.
        closest = (history_vectors[row, : lengths[row]] @ served.vectors[positions].T).argmax(0).tolist()
        answers.append(Recommendation(
            user_id=request.user_id, model=name, run=served.trained.run_id, snapshot=state.snapshot.id,
            tracks=[RankedTrack(track_id=state.track_ids[p], score=float(s), cold=not served.played[p],
                                label=state.labels[p], closest_in_history=state.track_ids[histories[row][c]])
                    for p, s, c in zip(positions, scores, closest)]))
    return answers


def _context(request: RecommendRequest, field_name: str) -> int:
    value = getattr(request.context, field_name) if request.context else None
    return -1 if value is None else value  # -1 embeds to zero: "unknown"


def _first_fetch(total: int, k: int, excluded: int, label: str | None) -> int:
    """How many results to ask the index for so that k are likely left after filtering."""
    return min(total, k + excluded) if label is None else min(total, 4 * (k + excluded))


def _top_tracks(state: RecommendState, served: ServedModel, query: np.ndarray, k: int, excluded: set[int],
                label: str | None, fetch: int, found: tuple[list[str], np.ndarray]) -> tuple[list[int], list[float]]:
    """The k best catalog positions for a query, skipping ``excluded`` and other labels.

    ``found`` is the index's answer for the ``fetch`` best (or more); when filtering leaves fewer
    than k, the index is asked again for twice as many, until the whole catalog was asked.
    """
    total = len(state.track_ids)
    ids, scores = found
    while True:
        kept = [(state.position[t], float(s)) for t, s in zip(ids, scores)
                if state.position[t] not in excluded and (label is None or state.labels[state.position[t]] == label)]
        if len(kept) >= k or len(ids) >= total:
            kept = kept[:k]
            return [p for p, _ in kept], [s for _, s in kept]
        fetch = min(total, 2 * max(fetch, len(ids)))
        ids, scores = served.index.query(query, k=fetch, num_threads=1)


def similar_tracks(state: RecommendState, track_id: str, k: int, model: str) -> Neighbours:
    if model not in state.models:
        raise ClientError(422, "unknown_model", f"unknown model {model!r}; this snapshot serves "
                                                f"{', '.join(state.models)}", models=list(state.models))
    if track_id not in state.position:
        raise unknown_tracks([track_id], f"snapshot {state.snapshot.id}")
    served = state.models[model]
    ids, scores = served.index.neighbours(track_id, k=k)
    return Neighbours(track_id=track_id, model=model, snapshot=state.snapshot.id, tracks=[
        {"track_id": t, "score": float(s), "cold": not served.played[state.position[t]],
         "label": state.labels[state.position[t]]} for t, s in zip(ids, scores)])


def track_info(state: RecommendState, track_id: str) -> dict:
    if track_id not in state.position:
        raise unknown_tracks([track_id], f"snapshot {state.snapshot.id}")
    p = state.position[track_id]
    return {"track_id": track_id, "snapshot": state.snapshot.id, **state.metadata.get(track_id, {}),
            "played_in_training": {name: bool(served.played[p]) for name, served in state.models.items()}}


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

    def similar(self, track_id: str, k: int, model: str | None) -> Neighbours:
        state = self.follower.state
        # "More like this" is a question about sound: the autoencoder's space when it is served.
        return similar_tracks(state, track_id, k, model or ("autoencoder" if "autoencoder" in state.models
                                                             else self.default_model))

    def track(self, track_id: str) -> dict:
        return track_info(self.follower.state, track_id)

    def version(self) -> dict:
        return {"app": "recommend", "musicray": VERSION, **self.follower.state.version(),
                "loaded_at": self.follower.loaded_at, "swaps": self.follower.swaps}

    def health(self) -> dict:
        return {"status": "ok" if self.follower.alive else "stale", "snapshot": self.follower.state.snapshot.id,
                "poll_seconds": self.follower.poll_seconds, "last_reload_error": self.follower.last_error}


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass
class GenerateState:
    root: str
    generator: TrainedGenerator
    vocoder: Any  # musicray.vocoder.Vocoder
    track_ids: frozenset[str]  # the tracks whose opening can seed a continuation
    snapshot: str | None

    def version(self) -> dict:
        return {"generator": self.generator.run_id, "snapshot": self.snapshot, "seed_tracks": len(self.track_ids)}


def generate_pointers(root: str) -> tuple[str | None, str | None]:
    # The snapshot pointer moves after each refresh, which is when the features (seed tracks) change.
    return storage.read_pointer(workspace.model_pointer(root, GENERATOR)), snapshot_pointer(root)


def load_generate_state(root: str, pointers: tuple[str | None, str | None], device: str = "cpu") -> GenerateState:
    from musicray.generation import feature_config
    from musicray.vocoder import Vocoder

    run, snapshot_id = pointers
    if run is None:
        raise FileNotFoundError(f"no trained generator in {root}: run `musicray train --model generator` first")
    generator = load_generator(root, run, map_location=device)
    track_ids = frozenset(read_features(root, columns=["track_id"]).column("track_id").to_pylist())
    return GenerateState(root, generator, Vocoder(feature_config(generator.model)), track_ids, snapshot_id)


@dataclass
class GeneratedAudio:
    data: bytes
    media_type: str
    headers: dict[str, str]


class GenerateService:
    def __init__(self, root: str, *, device: str = "cpu", poll_seconds: float = DEFAULT_POLL_SECONDS,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.root = storage.normalize(root)
        self.max_upload_bytes = max_upload_bytes
        self.follower = Follower("generate", lambda: generate_pointers(self.root),
                                 lambda pointers: load_generate_state(self.root, pointers, device), poll_seconds)

    async def generate(self, request: GenerateRequest, upload: bytes | None = None) -> GeneratedAudio:
        state = self.follower.state
        if (request.seed_track_id is None) == (upload is None):
            raise ClientError(422, "seed_required", "give exactly one seed: seed_track_id, or an audio clip "
                                                    "uploaded as the multipart field seed_audio")
        if request.seed_track_id is not None and request.seed_track_id not in state.track_ids:
            raise unknown_tracks([request.seed_track_id], "the catalog's features")
        labels = state.generator.model.config.labels
        if request.label is not None and request.label not in labels:
            raise ClientError(422, "unknown_label", f"unknown label {request.label!r}; the generator knows "
                                                    f"{', '.join(labels) or 'no labels'}", labels=list(labels))
        # A few hundred ms of CPU per clip: off the event loop, so health checks and other requests go on.
        return await asyncio.to_thread(self._generate, state, request, upload)

    def _generate(self, state: GenerateState, request: GenerateRequest, upload: bytes | None) -> GeneratedAudio:
        from musicray.generation import generate_clip

        try:
            waveform, sample_rate, meta = generate_clip(
                state.root, seconds=request.seconds, seed_track=request.seed_track_id, seed_audio=upload,
                seed=request.seed, temperature=request.temperature, label=request.label,
                include_seed=request.include_seed, generator=state.generator, vocoder=state.vocoder,
                max_seconds=MAX_GENERATE_SECONDS)
        except ValueError as error:
            if upload is not None:  # every other input was checked above: it is the clip that failed
                raise ClientError(415, "not_audio", f"the uploaded seed_audio is not usable audio: {error}") from None
            raise ClientError(422, "invalid_request", str(error)) from None
        data = encode_audio(waveform, sample_rate, f".{request.format}")
        source = f"track:{request.seed_track_id}" if upload is None else "upload"
        return GeneratedAudio(data, AUDIO_MEDIA_TYPES[request.format], {
            "Content-Disposition": f'attachment; filename="generated-{request.seed}.{request.format}"',
            "X-Seed": str(request.seed), "X-Sample-Rate": str(sample_rate), "X-Seed-Source": source,
            "X-Seconds": f"{meta['seconds']:.3f}", "X-Generator-Run": meta["run_id"]})

    def version(self) -> dict:
        return {"app": "generate", "musicray": VERSION, **self.follower.state.version(),
                "loaded_at": self.follower.loaded_at, "swaps": self.follower.swaps}

    def health(self) -> dict:
        return {"status": "ok" if self.follower.alive else "stale",
                "generator": self.follower.state.generator.run_id, "last_reload_error": self.follower.last_error}


# ---------------------------------------------------------------------------------------------
# The FastAPI apps


def _error_response(status: int, kind: str, detail: str, **extra) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail, **extra}, status_code=status)


def _describe(errors: list[dict]) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def _with_error_handlers(app: FastAPI) -> FastAPI:
    @app.exception_handler(ClientError)
    async def client_error(_: Request, error: ClientError):
        return _error_response(error.status, error.kind, error.detail, **error.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError):
        errors = error.errors()
        kind = "malformed_json" if any(e.get("type") == "json_invalid" for e in errors) else "invalid_request"
        return _error_response(422, kind, _describe(errors),
                               errors=[{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors])

    return app


def _with_health_routes(app: FastAPI, service, served: str) -> FastAPI:
    """GET /healthz and GET /version of either app; ``served`` documents what /version reports."""

    @app.get("/healthz")
    async def healthz():
        """200 while the replica follows LATEST; 503 once it cannot."""
        health = service.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    @app.get("/version", description=served)
    async def version():
        return service.version()

    return app


def recommend_api(service: RecommendService) -> FastAPI:
    """The recommend app: POST /recommend, GET /similar/{track_id}, GET /tracks/{track_id}, /healthz, /version."""
    app = _with_error_handlers(FastAPI(
        title="musicray recommend", version=VERSION,
        description="Next-track recommendations from a listening history, similar tracks and track metadata, "
                    "served from the workspace's latest embedding snapshot."))

    @app.post("/recommend", response_model=Recommendation, responses=_ERRORS)
    async def recommend(request: RecommendRequest) -> Recommendation:
        """Rank the catalog (cold tracks included) for the session so far."""
        return await service.recommend(request)

    @app.get("/similar/{track_id}", response_model=Neighbours, responses=_ERRORS)
    async def similar(track_id: str = Path(...), k: int = Query(10, ge=1, le=MAX_K),
                      model: str | None = Query(None, description="default: autoencoder (sound-alike)")):
        """The tracks nearest to one track in a model's space, from the snapshot's index."""
        return service.similar(track_id, k, model)

    @app.get("/tracks/{track_id}", responses=_ERRORS)
    async def track(track_id: str):
        """A served track's catalog metadata, and which models saw it played."""
        return service.track(track_id)

    return _with_health_routes(app, service, "The snapshot and the model runs being served.")


_ERRORS = {404: {"description": "unknown track id (named in the body)"},
           422: {"description": "invalid request: malformed JSON, empty history, k out of range, unknown model"}}


def generate_api(service: GenerateService) -> FastAPI:
    """The generate app, mounted at route prefix /generate: POST /generate, /generate/healthz, /generate/version."""
    app = _with_error_handlers(FastAPI(
        title="musicray generate", version=VERSION,
        description="Continue a catalog track or an uploaded clip with the LSTM music generator; returns audio."))
    schema = {"$ref": "#/components/schemas/GenerateRequest"}
    upload_schema = {"type": "object", "properties": {
        "seed_audio": {"type": "string", "format": "binary", "description": f"at most {MAX_UPLOAD_BYTES} bytes"},
        **{name: {"type": "string"} for name in GenerateRequest.model_fields}}}

    @app.post("/", response_class=Response, openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}, "multipart/form-data": {"schema": upload_schema}}}},
              responses={200: {"content": {t: {} for t in AUDIO_MEDIA_TYPES.values()},
                               "description": "audio; headers X-Seed, X-Sample-Rate, X-Generator-Run"},
                         404: {"description": "unknown seed track"}, 413: {"description": "upload over the cap"},
                         415: {"description": "the upload is not audio"}, 422: {"description": "invalid request"}})
    async def generate(request: Request):
        """JSON {seed_track_id, seconds, seed, temperature, format, label?, include_seed?}, or the same fields
        as multipart form fields with the seed clip uploaded as ``seed_audio``."""
        body, upload = await _generate_body(request, service.max_upload_bytes)
        audio = await service.generate(body, upload)
        return Response(audio.data, media_type=audio.media_type, headers=audio.headers)

    _with_health_routes(app, service, "The generator run being served.")

    # Referenced by the request body above, which FastAPI cannot infer from a raw Request.
    original = app.openapi

    def openapi():
        spec = original()
        spec.setdefault("components", {}).setdefault("schemas", {})["GenerateRequest"] = \
            GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        spec["components"]["schemas"].update(GenerateRequest.model_json_schema(
            ref_template="#/components/schemas/{model}").get("$defs", {}))
        return spec

    app.openapi = openapi
    app.add_middleware(PrefixIsRoot)
    return app


class PrefixIsRoot:
    """ASGI middleware: a request for the route prefix itself (``POST /generate``) is the app's ``/``.

    Mounted under a prefix, Starlette would answer the bare prefix with a 307 redirect to
    ``/generate/``, which clients such as curl do not follow.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
        await self.app(scope, receive, send)


async def _generate_body(request: Request, max_upload_bytes: int) -> tuple[GenerateRequest, bytes | None]:
    """The generation request from a JSON body or a multipart form, uploads capped before they are read whole."""
    content_type = request.headers.get("content-type", "")
    declared = request.headers.get("content-length")
    cap = max_upload_bytes + 64 * 1024  # room for the form's other fields and boundaries
    if declared and declared.isdigit() and int(declared) > cap:
        raise ClientError(413, "upload_too_large", f"the request is {int(declared)} bytes; uploads are capped at "
                                                   f"{max_upload_bytes} bytes")
    body, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:  # a client that sent no Content-Length (chunked) is stopped here
            raise ClientError(413, "upload_too_large", f"uploads are capped at {max_upload_bytes} bytes")
        body.append(chunk)
    raw = b"".join(body)
    try:
        if content_type.startswith("multipart/form-data"):
            return await _form_body(request, raw, max_upload_bytes)
        if content_type and not content_type.startswith("application/json"):
            raise ClientError(415, "unsupported_media_type", f"send application/json, or multipart/form-data with "
                                                             f"the clip as seed_audio; got {content_type!r}")
        return GenerateRequest.model_validate_json(raw or b"null"), None
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False)) from None


async def _form_body(request: Request, raw: bytes, max_upload_bytes: int) -> tuple[GenerateRequest, bytes | None]:
    from starlette.datastructures import UploadFile

    async def replay():  # the body was already read (and capped) above
        return {"type": "http.request", "body": raw, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=20)
    fields, upload = {}, None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "seed_audio":
                raise ClientError(422, "invalid_request", f"unexpected file field {name!r}: upload the clip as "
                                                          f"seed_audio")
            upload = await value.read()
        else:
            fields[name] = value
    if upload is not None and len(upload) > max_upload_bytes:
        raise ClientError(413, "upload_too_large", f"seed_audio is {len(upload)} bytes; uploads are capped at "
                                                   f"{max_upload_bytes} bytes")
    if upload is not None and not upload:
        raise ClientError(415, "not_audio", "the uploaded seed_audio is empty")
    return GenerateRequest.model_validate(fields), upload
