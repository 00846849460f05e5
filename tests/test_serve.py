"""Ray Serve endpoints on the session's local Ray: recommendations, generation, client errors, swaps."""

from __future__ import annotations

import shutil
import threading
import time

import pandas as pd
import pytest
import requests

from musicray import serving, snapshots
from ray_jobs import refresh
from tests.conftest import audio_bytes
from tests.test_generator import small_model
from tests.workspace import publish_model, publish_models

TIMEOUT = 60  # seconds any one request may take: generous for a loaded 2-core machine


@pytest.fixture(scope="module")
def workspace(demo, extracted, tmp_path_factory):
    """A copy of the demo workspace with two recommenders that saw 16 of its tracks played, a small
    generator and one snapshot."""
    root = str(tmp_path_factory.mktemp("serve") / "ws")
    shutil.copytree(extracted, root)
    catalog = pd.read_parquet(demo.manifest)
    played = sorted(catalog["track_id"])[:16]
    publish_models(root, played)
    publish_model(root, "generator", "gen-r1", small_model(labels=sorted(set(catalog["label"]))), [])
    refresh.run_refresh(str(demo.manifest), root)
    return {"root": root, "manifest": str(demo.manifest), "catalog": catalog, "played": played,
            "cold": sorted(set(catalog["track_id"]) - set(played))}


@pytest.fixture(scope="module")
def server(workspace):
    from ray import serve

    from ray_jobs.serve import run_local

    port = serving.free_port()
    run_local(workspace["root"], port=port, poll_seconds=0.2)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def post(url, **kwargs):  # no redirects: the paths the issue names must answer themselves
    return requests.post(url, timeout=TIMEOUT, allow_redirects=False, **kwargs)


def get(url, **kwargs):
    return requests.get(url, timeout=TIMEOUT, allow_redirects=False, **kwargs)


def test_recommend_ranks_the_catalog_cold_tracks_included(server, workspace):
    history, rest = workspace["played"][:3], len(workspace["catalog"]) - 3
    answer = post(f"{server}/recommend", json={"user_id": "u1", "history": history, "k": rest,
                                               "context": {"hour": 22, "weekday": 6}})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    tracks = body["tracks"]
    assert body["user_id"] == "u1" and body["model"] == "lstm" and body["run"] == "lstm-r1"
    assert len(tracks) == rest and not {t["track_id"] for t in tracks} & set(history)  # the rest of the catalog
    scores = [t["score"] for t in tracks]
    assert scores == sorted(scores, reverse=True)
    assert {t["track_id"] for t in tracks if t["cold"]} == set(workspace["cold"])  # unplayed tracks are ranked
    assert all(t["closest_in_history"] in history for t in tracks)

    with_played = post(f"{server}/recommend", json={"history": history, "k": len(workspace["catalog"]), "exclude_played": False}).json()
    assert set(history) <= {t["track_id"] for t in with_played["tracks"]}

    label = workspace["catalog"]["label"].iloc[0]
    by_label = post(f"{server}/recommend", json={"history": history, "k": 3, "label": label, "model": "autoencoder"})
    assert by_label.status_code == 200, by_label.text
    assert by_label.json()["model"] == "autoencoder" and {t["label"] for t in by_label.json()["tracks"]} == {label}


def test_batched_answers_equal_one_at_a_time(workspace):
    """What @serve.batch does to a request must not change its answer."""
    state = serving.load_recommend_state(workspace["root"], serving.snapshot_pointer(workspace["root"]))
    played = workspace["played"]
    requests_ = [serving.RecommendRequest(history=played[i: i + n], k=5, context={"hour": i})
                 for i, n in ((0, 1), (2, 4), (5, 9), (1, 2))]
    items = [(state, "lstm", r) for r in requests_]
    together = serving.recommend_batch(items)
    for item, answer in zip(items, together):
        alone = serving.recommend_batch([item])[0]
        assert [t.track_id for t in alone.tracks] == [t.track_id for t in answer.tracks]
        assert [t.score for t in alone.tracks] == pytest.approx([t.score for t in answer.tracks], abs=1e-5)


def test_follower_swaps_whole_states_and_keeps_the_old_one_when_a_load_fails():
    pointer = {"now": "a"}

    def load(name):
        if name == "broken":
            raise RuntimeError("snapshot broken is incomplete")
        return {"snapshot": name}

    follower = serving.Follower("test", lambda: pointer["now"], load, poll_seconds=3600)
    try:
        assert follower.state == {"snapshot": "a"} and not follower.refresh()
        pointer["now"] = "b"
        assert follower.refresh() and follower.state == {"snapshot": "b"} and follower.swaps == 1
        pointer["now"] = "broken"
        with pytest.raises(RuntimeError, match="incomplete"):
            follower.refresh()
        assert follower.state == {"snapshot": "b"} and follower.pointers == "b"  # still serving b
    finally:
        follower.close()


def test_catalog_labels_follow_one_rule(tmp_path):
    """A null, NaN or blank label is no label: the track is absent from track_labels (as served, label None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from musicray import catalog, workspace as paths

    root = str(tmp_path / "ws")
    assert catalog.track_labels(root) == {} and catalog.track_metadata(root) == {}  # no extract yet
    (tmp_path / "ws").mkdir()
    pq.write_table(pa.table({"track_id": ["a", "b", "c", "d"], "uri": ["a.wav"] * 4,
                             "label": ["rock", None, " ", "jazz"], "bpm": [120.0, float("nan"), 90.0, None]}),
                   paths.catalog_file(root))
    assert catalog.track_labels(root) == {"a": "rock", "d": "jazz"}
    metadata = catalog.track_metadata(root)
    assert metadata["b"] == {"label": None, "bpm": None} and metadata["a"] == {"label": "rock", "bpm": 120.0}


def test_similar_tracks_and_metadata(server, workspace):
    track = workspace["cold"][0]
    similar = get(f"{server}/similar/{track}", params={"k": 5})
    assert similar.status_code == 200, similar.text
    body = similar.json()
    assert body["model"] == "autoencoder" and len(body["tracks"]) == 5 and track not in {t["track_id"] for t in body["tracks"]}
    info = get(f"{server}/tracks/{track}").json()
    row = workspace["catalog"].set_index("track_id").loc[track]
    assert info["label"] == row["label"] and info["played_in_training"] == {"lstm": False, "autoencoder": False}
    assert "uri" not in info


def test_health_version_and_openapi_docs(server, workspace):
    assert get(f"{server}/healthz").json()["status"] == "ok"
    version = get(f"{server}/version").json()
    assert version["snapshot"] == serving.snapshot_pointer(workspace["root"])
    assert version["models"] == {"lstm": "lstm-r1", "autoencoder": "autoencoder-r1"}
    assert get(f"{server}/generate/version").json()["generator"] == "gen-r1"
    assert get(f"{server}/generate/healthz").json()["status"] == "ok"
    paths = get(f"{server}/openapi.json").json()["paths"]
    assert {"/recommend", "/similar/{track_id}", "/tracks/{track_id}", "/healthz", "/version"} <= set(paths)
    generate_spec = get(f"{server}/generate/openapi.json").json()
    assert generate_spec["servers"] == [{"url": "/generate"}]  # the paths below are under the route prefix
    json_body, form = (generate_spec["paths"][p]["post"]["requestBody"]["content"] for p in ("", "/upload"))
    assert set(json_body) == {"application/json"} and set(form) == {"multipart/form-data"}
    upload_fields = generate_spec["components"]["schemas"]["GenerateUpload"]["properties"]
    assert {"seed_audio", "seconds", "seed", "format"} <= set(upload_fields)
    assert get(f"{server}/generate/docs").status_code == 200
    assert get(f"{server}/docs").status_code == 200


def test_generate_returns_reproducible_audio(server, workspace):
    import io

    import soundfile as sf

    body = {"seed_track_id": workspace["cold"][0], "seconds": 1.0, "seed": 7, "temperature": 0.8, "format": "wav"}
    first, again = post(f"{server}/generate", json=body), post(f"{server}/generate", json=body)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "audio/wav" and first.headers["x-seed"] == "7"
    assert first.headers["x-generator-run"] == "gen-r1" and first.content == again.content
    samples, rate = sf.read(io.BytesIO(first.content))
    assert rate == int(first.headers["x-sample-rate"]) and abs(len(samples) / rate - 1.0) < 0.05

    clip = audio_bytes(2.0, fmt="FLAC", freq=330.0)
    uploaded = post(f"{server}/generate/upload", files={"seed_audio": ("intro.flac", clip, "audio/flac")},
                    data={"seconds": "1", "format": "ogg", "seed": "3"})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.headers["content-type"] == "audio/ogg" and uploaded.headers["x-seed-source"] == "upload"
    assert uploaded.content[:4] == b"OggS"


def test_client_errors_are_4xx_with_a_clear_json_message(server, workspace):
    played = workspace["played"]
    big = b"RIFF" + b"\0" * (serving.MAX_UPLOAD_BYTES + 1)
    cases = [  # (name, request, status, words the message must carry)
        ("unknown track", lambda: post(f"{server}/recommend", json={"history": [played[0], "no-such-track"]}),
         404, "no-such-track"),
        ("empty history", lambda: post(f"{server}/recommend", json={"history": []}), 422, "history"),
        ("k = 0", lambda: post(f"{server}/recommend", json={"history": played[:1], "k": 0}), 422, "k"),
        ("k too large", lambda: post(f"{server}/recommend", json={"history": played[:1], "k": 101}), 422, "100"),
        ("unknown model", lambda: post(f"{server}/recommend", json={"history": played[:1], "model": "gpt"}),
         422, "gpt"),
        ("unknown label", lambda: post(f"{server}/recommend", json={"history": played[:1], "label": "polka"}),
         422, "polka"),
        ("bad hour", lambda: post(f"{server}/recommend", json={"history": played[:1], "context": {"hour": 24}}),
         422, "hour"),
        ("malformed JSON", lambda: post(f"{server}/recommend", data=b'{"history": [',
                                        headers={"content-type": "application/json"}), 422, "JSON"),
        ("unknown field", lambda: post(f"{server}/recommend", json={"histroy": played[:1]}), 422, "histroy"),
        ("similar: unknown track", lambda: get(f"{server}/similar/nope"), 404, "nope"),
        ("similar: k out of range", lambda: get(f"{server}/similar/{played[0]}", params={"k": 0}), 422, "k"),
        ("tracks: unknown track", lambda: get(f"{server}/tracks/nope"), 404, "nope"),
        ("seconds over the cap", lambda: post(f"{server}/generate", json={"seed_track_id": played[0], "seconds": 31}),
         422, "30"),
        ("generate: unknown seed track", lambda: post(f"{server}/generate", json={"seed_track_id": "nope"}),
         404, "nope"),
        ("generate: no seed", lambda: post(f"{server}/generate", json={"seconds": 1}), 422, "seed"),
        ("generate: bad format", lambda: post(f"{server}/generate", json={"seed_track_id": played[0], "format": "mp3"}),
         422, "format"),
        ("generate: malformed JSON", lambda: post(f"{server}/generate", data=b"{", headers={
            "content-type": "application/json"}), 422, "JSON"),
        ("oversized upload", lambda: post(f"{server}/generate/upload", files={"seed_audio": ("big.wav", big,
                                                                                            "audio/wav")},
                                          data={"seconds": "1"}), 413, "capped"),
        ("non-audio upload", lambda: post(f"{server}/generate/upload", files={"seed_audio": (
            "notes.txt", b"hello " * 100, "text/plain")},
                                          data={"seconds": "1"}), 415, "audio"),
        ("upload and track both", lambda: post(f"{server}/generate/upload", files={"seed_audio": (
            "a.wav", audio_bytes(1.0), "audio/wav")}, data={"seed_track_id": played[0]}), 422, "exactly one"),
        ("upload: no clip", lambda: post(f"{server}/generate/upload", files={"other": ("a.wav", b"x", "audio/wav")},
                                         data={"seconds": "1"}), 422, "seed_audio"),
        ("upload sent to the JSON route", lambda: post(f"{server}/generate", files={"seed_audio": (
            "a.wav", audio_bytes(1.0), "audio/wav")}), 415, "/generate/upload"),
        ("generate: not JSON", lambda: post(f"{server}/generate", data=b"seconds=1", headers={
            "content-type": "application/x-www-form-urlencoded"}), 415, "application/json"),
    ]
    for name, send, status, words in cases:
        response = send()
        assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
        body = response.json()
        assert words.lower() in body["detail"].lower(), f"{name}: {body}"
        assert body["error"], name


def test_the_upload_cap_stops_reading_a_body_past_it(workspace):
    """413 after reading at most the cap: a declared Content-Length before any byte, a body without
    one (chunked) as its bytes pass the cap; never the whole body first."""
    import asyncio
    import json

    cap = 100_000
    service = serving.GenerateService(workspace["root"], poll_seconds=3600, max_upload_bytes=cap)
    app = serving.generate_api(service)
    head = b'--x\r\nContent-Disposition: form-data; name="seed_audio"; filename="a.wav"\r\n\r\n'
    chunk, chunks = b"\0" * 65536, 1000  # a 64 MB body

    def send_upload(headers: list[tuple[bytes, bytes]]) -> tuple[int, dict, int]:
        pulled, answer = [0], {"body": b""}

        async def receive():
            pulled[0] += 1
            return {"type": "http.request", "body": head if pulled[0] == 1 else chunk, "more_body": pulled[0] < chunks}

        async def send(message):
            answer["status"] = message.get("status", answer.get("status"))
            answer["body"] += message.get("body", b"")

        asyncio.run(app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                         "scheme": "http", "path": "/generate/upload", "raw_path": b"/generate/upload",
                         "root_path": "/generate", "query_string": b"", "server": ("127.0.0.1", 80),
                         "client": ("127.0.0.1", 1),
                         "headers": [(b"content-type", b"multipart/form-data; boundary=x"), *headers]}, receive, send))
        return answer["status"], json.loads(answer["body"]), pulled[0]

    try:
        status, body, pulled = send_upload([(b"content-length", str(chunks * len(chunk)).encode())])
        assert (status, body["error"], pulled) == (413, "upload_too_large", 0)
        status, body, pulled = send_upload([])
        assert status == 413 and f"capped at {cap} bytes" in body["detail"]
        assert (pulled - 1) * len(chunk) <= cap + len(chunk) + 64 * 1024  # stopped at the cap, not the body's end
    finally:
        service.follower.close()


def test_a_new_snapshot_is_swapped_in_under_load_without_a_failed_request(server, workspace):
    root = workspace["root"]
    before = get(f"{server}/version").json()
    failures, answers, stop = [], [], threading.Event()

    def client(n: int):
        history = workspace["played"][n: n + 3]
        while not stop.is_set():
            try:
                response = post(f"{server}/recommend", json={"history": history, "k": 5})
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    answers.append((response.json()["snapshot"], response.json()["run"]))
            except requests.RequestException as error:
                failures.append(repr(error))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    try:
        # New model runs, then the refresh that embeds the catalog with them and publishes a snapshot.
        runs = publish_models(root, workspace["played"], run="r2")
        report = refresh.run_refresh(workspace["manifest"], root)
        assert report.published
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            version = get(f"{server}/version").json()
            if version["snapshot"] == report.snapshot_id:
                break
            time.sleep(0.2)
        served_after_swap = len(answers)
        deadline = time.monotonic() + 30
        while len(answers) < served_after_swap + 20 and time.monotonic() < deadline:
            time.sleep(0.1)  # let requests run on the new state too
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=TIMEOUT)
    assert failures == []
    assert version["snapshot"] == report.snapshot_id != before["snapshot"]
    assert version["models"] == runs and version["swaps"] >= 1
    assert (before["snapshot"], "lstm-r1") in answers and (report.snapshot_id, "lstm-r2") in answers
    # A response pairs a snapshot with the runs it was embedded with: never old vectors with new weights.
    assert set(answers) == {(before["snapshot"], "lstm-r1"), (report.snapshot_id, "lstm-r2")}
    assert snapshots.latest_snapshot(root).id == report.snapshot_id


def test_serve_command_says_what_is_missing(tmp_path, capsys):
    from ray_jobs.serve import main

    assert main(["--local", "--root", str(tmp_path / "empty")]) == 2
    assert "no embedding snapshot in" in capsys.readouterr().err


def test_serve_local_answers_through_haproxy(workspace):
    """`musicray serve --local` in a process of its own, as a user runs it: a Ray of its own whose
    Serve ingress is HAProxy, answering a recommendation, and stopping cleanly on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    port = serving.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}  # the command's defaults
    command = [sys.executable, "-m", "ray_jobs.serve", "--local", "--root", workspace["root"],
               "--port", str(port), "--no-generate"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:  # it prints its URLs, then "serving"
            if line.startswith("serving"):
                break
        else:
            pytest.fail(f"musicray serve --local exited with {server.wait()} before serving")
        answer = post(f"http://127.0.0.1:{port}/recommend", json={"history": workspace["played"][:2], "k": 3})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["tracks"]) == 3
        programs = [line.split()[0] for line in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                                text=True, check=True).stdout.splitlines()[1:]]
        assert any(program.endswith("/haproxy") for program in programs)  # Ray's bundled binary is the ingress
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0
