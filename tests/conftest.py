"""Shared fixtures: one local Ray instance and one S3 server (moto, real HTTP) per test session."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

# Small tensors on 2 cores: one thread avoids contention that makes an LSTM step ~8x slower.
torch.set_num_threads(1)

SUITE_BUDGET_MINUTES = 15  # on a 2-core machine; README's test command states the measured time
_started = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    minutes = (time.monotonic() - _started) / 60
    terminalreporter.write_line(f"suite time: {minutes:.1f} min (budget {SUITE_BUDGET_MINUTES} min); "
                                f"the slowest tests follow")


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1, as Ray's own tests use it; the AWS variables point at it.

    Started before Ray so Ray's worker processes inherit the same environment.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    import ray
    from ray.data import DataContext

    # The dashboard serves the State API, through which Ray Train frees the workers of a run whose
    # controller was killed (a trial that Tune's scheduler stops): without it their CPUs stay taken.
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False,
             object_store_memory=1_000_000_000)
    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The demo catalog and listening logs that the Ray job tests share: 32 tracks of 4 s, 80 listeners."""
    from musicray.demo import generate

    return generate(tmp_path_factory.mktemp("demo") / "demo", tracks=32, users=80, seed=1, seconds=4.0)


@pytest.fixture(scope="session")
def extracted(ray_cluster, demo, tmp_path_factory) -> Path:
    """The demo's features, extracted once for the session; tests write to a copy (``features_root``)."""
    from ray_jobs.extract import run_extract

    root = tmp_path_factory.mktemp("extracted") / "ws"
    report = run_extract(str(demo.manifest), str(root))  # the default config, as refresh extracts
    assert report.done == len(pd.read_parquet(demo.manifest)) and not report.failed
    return root


@pytest.fixture
def features_root(extracted, tmp_path) -> str:
    """A test's own copy of the extracted demo workspace: it may train, refresh or serve into it."""
    root = tmp_path / "ws"
    shutil.copytree(extracted, root)
    return str(root)


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh bucket on the S3 server, named after the test."""
    from musicray import storage

    # A hash of the test's id keeps parametrized variants of one long name apart.
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    name = ("t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()))[:50].strip("-") + "-" + digest
    storage.s3_client().create_bucket(Bucket=name)
    return name


def tone(seconds: float, sample_rate: int = 22050, channels: int = 1, freq: float = 440.0,
         seed: int = 0) -> np.ndarray:
    """A short musical-ish signal: a tone with harmonics, a pulse and a little noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(seed)
    signal = sum(0.3 / k * np.sin(2 * np.pi * freq * k * t) for k in (1, 2, 3))
    signal = signal * (0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0)) + 0.02 * rng.standard_normal(t.size)
    frames = np.stack([signal * (1 - 0.2 * c) for c in range(channels)], axis=1)
    return frames.astype(np.float32)


def audio_bytes(seconds: float, fmt: str = "WAV", sample_rate: int = 22050, channels: int = 1,
                freq: float = 440.0, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    subtype = "VORBIS" if fmt == "OGG" else None
    sf.write(buffer, tone(seconds, sample_rate, channels, freq, seed), sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def write_catalog(folder: Path, files: dict[str, tuple[str, bytes | None]], name="catalog.parquet") -> Path:
    """Write audio files and a manifest; ``files`` maps track_id -> (relative uri, bytes or None=absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    for uri, data in files.values():
        if data is not None:
            (folder / uri).parent.mkdir(parents=True, exist_ok=True)
            (folder / uri).write_bytes(data)
    manifest = folder / name
    table = pd.DataFrame({"track_id": list(files), "uri": [u for u, _ in files.values()],
                          "label": [f"style{i % 2}" for i in range(len(files))]})
    if name.endswith(".csv"):
        table.to_csv(manifest, index=False)
    else:
        table.to_parquet(manifest, index=False)
    return manifest
