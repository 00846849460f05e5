"""Generation from the served generator: its state, the request, and the service the generate app calls.

The state is the run ``<root>/models/generator/LATEST`` names, its vocoder, and the tracks whose
opening can seed a continuation (the features' track ids, re-read when a refresh moves the snapshot
pointer). A clip is a few hundred ms of CPU, run off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from musicray import storage, workspace
from musicray.audio import encode_audio
from musicray.generation import MODEL_NAME as GENERATOR, TrainedGenerator, feature_config, generate_clip, load_generator
from musicray.schemas import read_features
from musicray.serving.errors import ClientError, unknown_tracks
from musicray.serving.follower import DEFAULT_POLL_SECONDS, Follower
from musicray.vocoder import Vocoder

MAX_GENERATE_SECONDS = 30.0  # the generate command's default cap
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # a 10 MB seed clip is a minute of FLAC: plenty for a 5 s seed
AUDIO_MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed_track_id: str | None = Field(None, description="a catalog track whose opening is the seed; or upload a "
                                                        "clip as seed_audio to POST /generate/upload instead")
    seconds: float = Field(10.0, gt=0, le=MAX_GENERATE_SECONDS, description="length of the continuation")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed: the same seed gives the same bytes")
    temperature: float = Field(1.0, ge=0, le=10, description="sampling temperature (0: most likely)")
    format: Literal["wav", "flac", "ogg"] = "wav"
    label: str | None = Field(None, description="style label to condition on")
    include_seed: bool = Field(False, description="start the audio with the vocoded seed")


@dataclass
class GenerateState:
    root: str
    generator: TrainedGenerator
    vocoder: Vocoder
    track_ids: frozenset[str]  # the tracks whose opening can seed a continuation
    snapshot: str | None

    def version(self) -> dict:
        return {"generator": self.generator.run_id, "snapshot": self.snapshot, "seed_tracks": len(self.track_ids)}


def generate_pointers(root: str) -> tuple[str | None, str | None]:
    # The snapshot pointer moves after each refresh, which is when the features (seed tracks) change.
    return (storage.read_pointer(workspace.model_pointer(root, GENERATOR)),
            storage.read_pointer(workspace.snapshot_pointer(root)))


def load_generate_state(root: str, pointers: tuple[str | None, str | None], device: str = "cpu") -> GenerateState:
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
                                                    "uploaded as seed_audio (POST /generate/upload)")
        if request.seed_track_id is not None and request.seed_track_id not in state.track_ids:
            raise unknown_tracks([request.seed_track_id], "the catalog's features")
        labels = state.generator.model.config.labels
        if request.label is not None and request.label not in labels:
            raise ClientError(422, "unknown_label", f"unknown label {request.label!r}; the generator knows "
                                                    f"{', '.join(labels) or 'no labels'}", labels=list(labels))
        # A few hundred ms of CPU per clip: off the event loop, so health checks and other requests go on.
        return await asyncio.to_thread(self._generate, state, request, upload)

    def _generate(self, state: GenerateState, request: GenerateRequest, upload: bytes | None) -> GeneratedAudio:
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
        return {**self.follower.state.version(), "loaded_at": self.follower.loaded_at, "swaps": self.follower.swaps}

    def health(self) -> dict:
        return {"status": "ok" if self.follower.alive else "stale",
                "generator": self.follower.state.generator.run_id, "last_reload_error": self.follower.last_error}
