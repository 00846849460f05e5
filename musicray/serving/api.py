"""The two FastAPI apps: routes, the error responses, health and version, the upload cap.

``ray_jobs/serve.py`` wraps these apps in Ray Serve deployments (replicas, autoscaling,
``@serve.batch``); ``benchmarks/serve.py`` runs the very same recommend app in one uvicorn process.

Errors. A client mistake is a 4xx with a JSON body ``{"error": kind, "detail": message, ...}``:
422 for a body that does not validate (malformed JSON included), 404 for an unknown track id
(named), 413 for an upload over the cap, 415 for an upload that is not audio or a body of the
wrong content type.

The generate app is served at the route prefix ``/generate``: ``POST /generate`` takes a JSON body,
``POST /generate/upload`` the same fields as a multipart form with the seed clip. Ray Serve passes
a request for the prefix itself with the path ``/generate`` and the root path ``/generate``, which
Starlette routes as the empty path: the JSON route is declared at ``""`` so that ``POST /generate``
answers there (a route at ``/`` would answer only ``/generate/``, and the bare prefix with a 307
redirect, which curl does not follow). Its OpenAPI path is ``""`` under the server URL ``/generate``.
"""

from __future__ import annotations

import socket
from typing import Annotated

from fastapi import Depends, FastAPI, Form, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from musicray.serving.errors import ClientError
from musicray.serving.generate import AUDIO_MEDIA_TYPES, GenerateRequest, GenerateService
from musicray.serving.recommend import MAX_K, Neighbours, Recommendation, RecommendRequest, RecommendService
from musicray.serving.tags import parse_tag_params, request_filters

VERSION = "0.1.0"
FORM_OVERHEAD_BYTES = 64 * 1024  # room beside the upload for the form's other fields and boundaries


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now, for a local server."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Errors, health and version: the same in both apps


def _error_response(status: int, kind: str, detail: str, **extra) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail, **extra}, status_code=status)


def _describe(errors: list[dict]) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


class BodyTooLarge(HTTPException):
    """A request body read past the cap. An HTTPException because FastAPI passes those on from body
    reading (any other error there becomes a 400)."""


def _with_error_handlers(app: FastAPI) -> FastAPI:
    @app.exception_handler(ClientError)
    async def client_error(_: Request, error: ClientError):
        return _error_response(error.status, error.kind, error.detail, **error.extra)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, error: BodyTooLarge):
        return _error_response(413, "upload_too_large", error.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError):
        errors = error.errors()
        kind = "malformed_json" if any(e.get("type") == "json_invalid" for e in errors) else "invalid_request"
        return _error_response(422, kind, _describe(errors),
                               errors=[{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors])

    return app


def _with_health_routes(app: FastAPI, service: RecommendService | GenerateService, name: str,
                        served: str) -> FastAPI:
    """GET /healthz and GET /version of either app; ``served`` documents what /version reports."""

    @app.get("/healthz")
    async def healthz():
        """200 while the replica follows LATEST; 503 once it cannot."""
        health = service.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    @app.get("/version", description=served)
    async def version():
        return {"app": name, "musicray": VERSION, **service.version()}

    return app


# ---------------------------------------------------------------------------------------------
# Recommendation


_ERRORS = {404: {"description": "unknown track id (named in the body)"},
           422: {"description": "invalid request: malformed JSON, empty history, k out of range, unknown model, "
                                "unknown tag column or value (the known ones listed)"}}


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
                      model: str | None = Query(None, description="default: autoencoder (sound-alike)"),
                      label: str | None = Query(None, description="only tracks with this label (catalog, else predicted)"),
                      mood: str | None = Query(None, description="only tracks with this mood (catalog, else predicted)"),
                      tag: list[str] = Query([], description="column:value, e.g. instrument:piano (repeatable)")):
        """The tracks nearest to one track in a model's space, from the snapshot's index, optionally only
        those with the given tags."""
        return service.similar(track_id, k, model, request_filters(label, mood, parse_tag_params(tag)))

    @app.get("/tracks/{track_id}", responses=_ERRORS)
    async def track(track_id: str):
        """A served track's catalog metadata, which models saw it played, and its tags: the catalog's and
        the tagger's predictions with their probabilities."""
        return service.track(track_id)

    return _with_health_routes(app, service, "recommend", "The snapshot and the model runs being served.")


# ---------------------------------------------------------------------------------------------
# Generation


class GenerateUpload(GenerateRequest):
    """The fields of a generation request as multipart form fields, and the seed clip."""
    seed_audio: UploadFile = Field(description="the seed clip (WAV, FLAC, Ogg, MP3, ...); the continuation "
                                               "follows on from its end")


def _audio_responses(errors: dict[int, str]) -> dict:
    return {200: {"content": {t: {} for t in AUDIO_MEDIA_TYPES.values()},
                  "description": "audio; headers X-Seed, X-Sample-Rate, X-Seconds, X-Generator-Run"},
            **{status: {"description": text} for status, text in errors.items()}}


async def _json_only(request: Request) -> None:
    """POST /generate reads JSON only; a form sent there (uploads once went to /generate) gets a 415 that
    names the upload route."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        got = f"got {content_type!r}" if content_type else "got no content type"
        raise ClientError(415, "unsupported_media_type", f"POST /generate takes an application/json body ({got}); "
                                                         f"upload a seed clip as multipart/form-data to "
                                                         f"POST /generate/upload")


class UploadCap:
    """ASGI middleware: a request body over the cap is answered 413 without being read whole.

    A Content-Length over the cap is refused before any byte is read; a body without one (chunked)
    is counted as it arrives and stopped once past the cap, so no more than the cap is ever read.
    """

    def __init__(self, app, max_upload_bytes: int):
        self.app, self.max_upload_bytes = app, max_upload_bytes
        self.limit = max_upload_bytes + FORM_OVERHEAD_BYTES

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            response = _error_response(413, "upload_too_large", f"the request is {int(declared)} bytes; uploads "
                                                                f"are capped at {self.max_upload_bytes} bytes")
            return await response(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(413, f"uploads are capped at {self.max_upload_bytes} bytes")
            return message

        await self.app(scope, counted_receive, send)


def generate_api(service: GenerateService) -> FastAPI:
    """The generate app, at route prefix /generate: POST /generate (JSON), POST /generate/upload (a seed
    clip), /generate/healthz, /generate/version."""
    app = _with_error_handlers(FastAPI(
        title="musicray generate", version=VERSION,
        description="Continue a catalog track or an uploaded clip with the LSTM music generator; returns audio."))
    app.add_middleware(UploadCap, max_upload_bytes=service.max_upload_bytes)

    # "": the route prefix itself, so POST /generate answers without a redirect (module docstring).
    @app.post("", response_class=Response, dependencies=[Depends(_json_only)], responses=_audio_responses(
        {404: "unknown seed track", 415: "not a JSON body", 422: "invalid request"}))
    async def generate(request: GenerateRequest):
        """Continue the opening of the catalog track ``seed_track_id``."""
        audio = await service.generate(request)
        return Response(audio.data, media_type=audio.media_type, headers=audio.headers)

    @app.post("/upload", response_class=Response, responses=_audio_responses({
        413: f"upload over the cap ({service.max_upload_bytes} bytes)", 415: "the upload is not audio",
        422: "invalid request"}))
    async def generate_from_upload(form: Annotated[GenerateUpload, Form(media_type="multipart/form-data")]):
        """Continue an uploaded clip: the fields of POST /generate as form fields, the clip as ``seed_audio``."""
        upload = form.seed_audio
        if upload.size is not None and upload.size > service.max_upload_bytes:
            raise ClientError(413, "upload_too_large", f"seed_audio is {upload.size} bytes; uploads are capped at "
                                                       f"{service.max_upload_bytes} bytes")
        data = await upload.read()
        if not data:
            raise ClientError(415, "not_audio", "the uploaded seed_audio is empty")
        audio = await service.generate(form, data)
        return Response(audio.data, media_type=audio.media_type, headers=audio.headers)

    return _with_health_routes(app, service, "generate", "The generator run being served.")
