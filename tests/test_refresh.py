"""The nightly refresh: snapshots on a real local Ray, real Parquet and indexes, atomic publishing."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from musicray import snapshots, storage
from musicray import workspace as layout
from ray_jobs import refresh
from musicray.schemas import parquet_files
from ray_jobs.extract import run_extract
from tests.conftest import audio_bytes
from tests.workspace import MODELS, publish_models


class Injected(RuntimeError):
    pass


@pytest.fixture
def workspace(demo, extracted, tmp_path):
    """A copy of the demo workspace with two models that saw only 16 of the 32 tracks played."""
    root = str(tmp_path / "ws")
    shutil.copytree(extracted, root)
    catalog = pd.read_parquet(demo.manifest)
    runs = publish_models(root, sorted(catalog["track_id"])[:16])
    return root, catalog, runs


def load_latest(root: str) -> snapshots.Snapshot:
    """Load what LATEST names the way a serving replica does: vectors and every index."""
    loaded = snapshots.load_latest(root, lambda s: (s.vectors(), {m: s.index(m) for m in s.models}))
    assert loaded is not None
    snapshot, (table, indexes) = loaded
    assert table.num_rows == snapshot.manifest["tracks"]
    assert all(len(index) == table.num_rows for index in indexes.values())
    return snapshot


def test_refresh_publishes_a_snapshot_and_follows_catalog_changes(demo, workspace, tmp_path):
    root, catalog, runs = workspace
    first = refresh.run_refresh(str(demo.manifest), root, keep=2)
    assert first.published and first.extract.skipped == 32 and first.tracks == first.embedded == 32
    snapshot = load_latest(root)
    assert snapshot.id == first.snapshot_id
    manifest = snapshot.manifest
    assert manifest["catalog"]["tracks"] == 32 and manifest["catalog"]["fingerprint"].startswith("sha256:")
    assert {m: manifest["models"][m]["run"] for m in MODELS} == runs
    assert manifest["models"]["lstm"]["metric"] == "ip" and manifest["models"]["autoencoder"]["metric"] == "cosine"
    assert all(manifest["models"][m]["recall_at_10"] >= 0.9 for m in MODELS)
    table = snapshot.vectors()
    assert table.column("track_id").to_pylist() == sorted(catalog["track_id"])
    assert set(table.column("lstm_run").to_pylist()) == {"lstm-r1"}
    assert np.isfinite(np.stack(table.column("autoencoder").to_numpy(zero_copy_only=False))).all()

    # The catalog changes: two tracks leave, a brand-new track nobody has played arrives.
    removed = sorted(catalog["track_id"])[-2:]
    folder = tmp_path / "next"
    shutil.copytree(demo.root, folder)
    (folder / "new.wav").write_bytes(audio_bytes(3.0, freq=660.0, seed=9))
    changed = catalog[~catalog["track_id"].isin(removed)].copy()
    changed = pd.concat([changed, pd.DataFrame({"track_id": ["brand-new"], "uri": ["new.wav"]})], ignore_index=True)
    changed.to_parquet(folder / "catalog.parquet", index=False)

    second = refresh.run_refresh(str(folder / "catalog.parquet"), root, keep=2)
    assert second.published and second.extract.done == 1 and second.tracks == 31
    # Only the new track is embedded: the others keep their vectors, as the same runs would give them.
    assert (second.embedded, second.reused) == (1, 30)
    snapshot = load_latest(root)
    assert snapshot.manifest["reused"] == {"tracks": 30, "from": first.snapshot_id}
    ids = snapshot.vectors(["track_id"]).column("track_id").to_pylist()
    assert "brand-new" in ids and not set(removed) & set(ids)
    kept = table.filter(pc.invert(pc.is_in(table.column("track_id"), pa.array(removed))))
    assert snapshot.vectors().filter(pc.is_in(snapshot.vectors().column("track_id"), kept.column("track_id"))).equals(
        kept.select(snapshot.vector_columns()))
    assert snapshot.manifest["catalog"]["fingerprint"] != manifest["catalog"]["fingerprint"]
    # Cold start: the new track has an audio-only vector, and its neighbours can be asked for.
    index = snapshot.index("autoencoder")
    top, _ = index.query(index.vector("brand-new"), k=1)
    assert top == ["brand-new"] and len(index.neighbours("brand-new", k=5)[0]) == 5

    # A retrained model (a new run) means every track is embedded again.
    retrained = publish_models(root, sorted(catalog["track_id"])[:16], run="r2", models=("lstm",))
    third = refresh.run_refresh(str(folder / "catalog.parquet"), root, keep=1)
    assert (third.embedded, third.reused) == (31, 0)
    assert set(load_latest(root).vectors(["lstm_run"]).column("lstm_run").to_pylist()) == {retrained["lstm"]}
    assert set(third.pruned) == {first.snapshot_id, second.snapshot_id}
    assert snapshots.complete_snapshots(root) == [third.snapshot_id]


def test_a_track_left_twice_by_an_interrupted_extraction_is_embedded_once(demo, workspace):
    root, _, _ = workspace
    # A run stopped between writing its rows and retiring the old ones leaves the same rows in two files.
    part = parquet_files(layout.features_dir(root))[0]
    storage.write_bytes(part.replace(".parquet", "-copy.parquet"), storage.read_bytes(part))
    report = refresh.run_refresh(str(demo.manifest), root)
    assert report.published and report.tracks == report.embedded == 32
    snapshots.verify(root, report.snapshot_id, 32)  # no duplicate ids, indexes match the vectors


def test_a_failure_half_way_leaves_the_previous_snapshot_published(demo, workspace):
    root, _, _ = workspace
    good = refresh.run_refresh(str(demo.manifest), root)
    for failing_stage in ("embed", "index"):
        def fail(name, seconds, stage=failing_stage):
            if name == stage:
                raise Injected(f"stopped after {name}")

        with pytest.raises(Injected):
            refresh.run_refresh(str(demo.manifest), root, on_stage=fail)
        assert storage.read_pointer(layout.snapshot_pointer(root)) == good.snapshot_id
        assert load_latest(root).id == good.snapshot_id
    # The two partial folders hold vectors (and indexes) but no manifest: never complete.
    partial = [s for s in storage.list_dirs(layout.embeddings_dir(root)) if s != good.snapshot_id]
    assert len(partial) == 2 and snapshots.complete_snapshots(root) == [good.snapshot_id]

    again = refresh.run_refresh(str(demo.manifest), root, keep=1)
    assert again.published and load_latest(root).id == again.snapshot_id
    assert snapshots.complete_snapshots(root) == [again.snapshot_id]
    assert set(storage.list_dirs(layout.embeddings_dir(root))) == {again.snapshot_id, *partial}  # young: kept


def test_a_corrupt_model_fails_the_refresh_before_publishing(demo, workspace):
    root, catalog, _ = workspace
    good = refresh.run_refresh(str(demo.manifest), root)
    runs = publish_models(root, sorted(catalog["track_id"])[:16], run="broken", models=("lstm",))
    state = layout.model_dir(root, "lstm", runs["lstm"]) + "/state_dict.pt"
    storage.write_bytes(state, b"not a checkpoint")
    with pytest.raises(Exception, match="(?i)state_dict|pickle|zip|load"):
        refresh.run_refresh(str(demo.manifest), root)
    assert load_latest(root).id == good.snapshot_id


def test_concurrent_refreshes_never_publish_a_partial_snapshot(demo, workspace):
    root, _, _ = workspace
    refresh.run_refresh(str(demo.manifest), root)
    seen, errors, done = set(), [], threading.Event()

    def reader():  # what a serving replica does: follow LATEST and load what it names
        while not done.is_set():
            try:
                seen.add(load_latest(root).id)
            except Exception as error:
                errors.append(f"reader: {error!r}")
            time.sleep(0.05)

    def writer():
        try:
            refresh.run_refresh(str(demo.manifest), root, keep=1)
        except Exception as error:
            errors.append(f"writer: {error!r}")

    # Daemon threads and a bounded join: a deadlock fails this test instead of hanging the suite.
    threads = [threading.Thread(target=reader, daemon=True)] + [
        threading.Thread(target=writer, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 300
    for t in threads[1:]:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    done.set()
    threads[0].join(timeout=10)
    assert not any(t.is_alive() for t in threads), "concurrent refreshes did not finish within 300 s"
    assert errors == []
    final = load_latest(root)
    snapshots.verify(root, final.id, final.manifest["tracks"])
    assert final.id == snapshots.complete_snapshots(root)[-1] and len(seen) >= 2


def test_a_reader_follows_latest_when_a_prune_removes_what_it_was_loading(tmp_path):
    root = str(tmp_path)
    older, newer = snapshots.new_snapshot_id(), snapshots.new_snapshot_id()
    for snapshot_id in (older, newer):
        snapshots.write_manifest(root, snapshot_id, {"snapshot": snapshot_id, "models": {}, "files": []})
    storage.publish(layout.snapshot_pointer(root), older)
    loads = []

    def load(snapshot):  # half-way through, a refresh publishes `newer` and prunes `older`
        loads.append(snapshot.id)
        if snapshot.id == older:
            storage.publish(layout.snapshot_pointer(root), newer)
            assert snapshots.prune(root, keep=1) == [older]
        return json.loads(storage.read_text(storage.join(snapshot.uri, snapshots.MANIFEST)))["snapshot"]

    snapshot, loaded = snapshots.load_latest(root, load)
    assert (snapshot.id, loaded, loads) == (newer, newer, [older, newer])

    def broken(snapshot):  # LATEST does not move: the error is the snapshot's own, raised at once
        raise OSError(f"{snapshot.id} is unreadable")

    with pytest.raises(OSError, match=newer):
        snapshots.load_latest(root, broken)


def test_refresh_on_s3(demo, bucket, tmp_path):
    root = f"s3://{bucket}/ws"
    run_extract(str(demo.manifest), root)
    publish_models(root, sorted(pd.read_parquet(demo.manifest)["track_id"])[:10])
    assert refresh.main(["--catalog", str(demo.manifest), "--root", root, "--keep", "1"]) == 0
    snapshot = load_latest(root)
    assert snapshot.manifest["tracks"] == 32 and snapshot.uri.startswith("s3://")


def test_bad_inputs_are_named(demo, tmp_path, capsys):
    empty = str(tmp_path / "empty")
    assert refresh.main(["--catalog", str(demo.manifest), "--root", empty]) == 2
    assert "no trained model in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        refresh.parse_args(["--catalog", "x.parquet", "--root", empty, "--keep", "0"])
    assert "--keep" in capsys.readouterr().err
