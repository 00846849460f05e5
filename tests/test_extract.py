"""The extract job on a local Ray: outcomes per track, incrementality, catalog errors, S3."""

import io

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from musicray import storage, workspace
from musicray.catalog import CatalogError, load_catalog
from musicray.features import FeatureConfig
from musicray.schemas import features_schema, parquet_files, read_features
from ray_jobs import extract
from tests.conftest import audio_bytes, write_catalog

CONFIG = FeatureConfig(crop_seconds=4.0)


def good_tracks():
    return {
        "wav-44k-stereo": ("audio/a.wav", audio_bytes(3.0, "WAV", 44100, 2, freq=220)),
        "flac-8k-mono": ("audio/b.flac", audio_bytes(3.0, "FLAC", 8000, 1, freq=330)),
        "mp3": ("audio/c.mp3", audio_bytes(3.0, "MP3", 48000, 2, freq=440)),
        "ogg": ("audio/d.ogg", audio_bytes(3.0, "OGG", 32000, 1, freq=550)),
        "name with spaces": ("audio/my song – été ♪.flac", audio_bytes(3.0, "FLAC", 22050, 1, freq=660)),
        "silent": ("audio/silent.wav", silence(3.0)),
    }


def silence(seconds):
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * 22050), dtype=np.float32), 22050, format="WAV")
    return buffer.getvalue()


def bad_tracks():
    flac = audio_bytes(6.0, "FLAC", 44100, 1)
    return {
        "zero-byte": ("audio/zero.wav", b""),
        "truncated": ("audio/truncated.flac", flac[: len(flac) // 2]),
        "random-bytes": ("audio/noise.mp3", np.random.default_rng(3).bytes(4096)),
        "corrupt-header": ("audio/corrupt.wav", b"RIFF\x24\x08\x00\x00WAVEfmt " + b"\xff" * 40),
        "too-short": ("audio/blip.wav", audio_bytes(0.4, "WAV")),
        "missing": ("audio/not-there.wav", None),
    }


def test_every_track_is_done_skipped_or_failed_and_reruns_decode_nothing(ray_cluster, tmp_path):
    manifest = write_catalog(tmp_path / "catalog", {**good_tracks(), **bad_tracks()})
    root = str(tmp_path / "ws")

    first = extract.run_extract(str(manifest), root, config=CONFIG)
    assert (first.total, first.done, first.skipped, first.failed) == (12, 6, 0, 6)
    assert first.failures_by_kind == {"empty": 1, "truncated": 1, "decode_error": 2, "too_short": 1, "missing": 1}

    features = read_features(root)
    assert features.schema.equals(features_schema(CONFIG), check_metadata=False)
    assert sorted(features.column("track_id").to_pylist()) == sorted(good_tracks())
    frame = features.to_pandas().set_index("track_id")
    for name in ("mfcc_mean", "chroma_mean", "logmel"):
        assert all(np.isfinite(np.asarray(v, dtype=np.float32)).all() for v in frame[name]), name
    assert frame.loc["silent", "rms_mean"] == 0.0
    assert frame.loc["wav-44k-stereo", "sample_rate"] == 44100 and frame.loc["wav-44k-stereo", "channels"] == 2
    assert frame.loc["flac-8k-mono", "duration_s"] == pytest.approx(3.0, abs=0.01)
    assert frame.loc["name with spaces", "uri"].endswith("my song – été ♪.flac")

    errors = pq.read_table(parquet_files(workspace.errors_dir(root))[0]).to_pandas().set_index("track_id")
    assert sorted(errors.index) == sorted(bad_tracks())
    assert errors.loc["missing", "error_kind"] == "missing" and (errors["message"].str.len() > 0).all()

    files_before = {uri: storage.read_bytes(uri) for uri in parquet_files(workspace.features_dir(root))}
    second = extract.run_extract(str(manifest), root, config=CONFIG)
    assert (second.done, second.skipped, second.failed) == (0, 6, 6)  # only the failures are retried
    files_after = {uri: storage.read_bytes(uri) for uri in parquet_files(workspace.features_dir(root))}
    assert files_after == files_before  # nothing re-extracted, nothing rewritten


def test_changed_and_removed_tracks(ray_cluster, tmp_path):
    tracks = good_tracks()
    manifest = write_catalog(tmp_path / "catalog", tracks)
    root = str(tmp_path / "ws")
    extract.run_extract(str(manifest), root, config=CONFIG)
    before = read_features(root).to_pandas().set_index("track_id")

    tracks["mp3"] = ("audio/c.mp3", audio_bytes(3.0, "MP3", 48000, 2, freq=880))  # new content
    del tracks["ogg"]  # removed from the catalog
    manifest = write_catalog(tmp_path / "catalog", tracks)
    report = extract.run_extract(str(manifest), root, config=CONFIG)
    assert (report.total, report.done, report.skipped, report.failed) == (5, 1, 4, 0)

    after = read_features(root).to_pandas().set_index("track_id")
    assert sorted(after.index) == sorted(tracks)
    assert after.loc["mp3", "content_hash"] != before.loc["mp3", "content_hash"]
    assert not np.allclose(after.loc["mp3", "chroma_mean"], before.loc["mp3", "chroma_mean"])
    assert after.loc["wav-44k-stereo", "content_hash"] == before.loc["wav-44k-stereo", "content_hash"]
    # one row per track in the files themselves, not only after the reader's de-duplication
    rows = sum(pq.read_metadata(io.BytesIO(storage.read_bytes(u))).num_rows for u in parquet_files(workspace.features_dir(root)))
    assert rows == len(tracks)

    longer = extract.run_extract(str(manifest), root, config=FeatureConfig(crop_seconds=5.0))
    assert longer.done == len(tracks)  # another extractor version re-extracts everything


def test_failure_rate_sets_the_exit_code(ray_cluster, tmp_path, capsys):
    tracks = {**good_tracks(), "missing": ("audio/not-there.wav", None)}
    manifest = write_catalog(tmp_path / "catalog", tracks)
    args = ["--catalog", str(manifest), "--root", str(tmp_path / "ws"), "--crop-seconds", "4"]
    assert extract.main(args + ["--max-failure-rate", "0.05"]) == 1
    out = capsys.readouterr()
    assert "7 in = 6 done + 0 skipped + 1 failed (missing: 1)" in out.out
    assert "above --max-failure-rate" in out.err
    assert extract.main(args + ["--max-failure-rate", "0.2"]) == 0
    assert "7 in = 0 done + 6 skipped + 1 failed" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["catalog.parquet", "catalog.csv"])
def test_manifest_errors_are_clear_and_come_before_any_work(tmp_path, name):
    tracks = good_tracks()
    manifest = write_catalog(tmp_path, tracks, name=name)
    table = pd.read_parquet(manifest) if name.endswith(".parquet") else pd.read_csv(manifest)

    duplicated = pd.concat([table, table.iloc[:2]])
    _save(duplicated, manifest)
    with pytest.raises(CatalogError, match=r"track_id must be unique.*wav-44k-stereo"):
        extract.run_extract(str(manifest), str(tmp_path / "ws"))

    _save(table.drop(columns=["uri"]), manifest)
    with pytest.raises(CatalogError, match=r"lacks required column\(s\) \['uri'\]"):
        extract.run_extract(str(manifest), str(tmp_path / "ws"))
    assert not (tmp_path / "ws").exists()

    with pytest.raises(CatalogError, match="not found"):
        load_catalog(str(tmp_path / "nope.parquet"))


def test_cli_reports_a_bad_catalog_without_a_traceback(tmp_path, capsys):
    from musicray.cli import main

    assert main(["extract", "--catalog", str(tmp_path / "missing.csv"), "--root", str(tmp_path / "ws")]) == 2
    assert "catalog manifest not found" in capsys.readouterr().err


def _save(table, path):
    table.to_csv(path, index=False) if str(path).endswith(".csv") else table.to_parquet(path, index=False)


def test_s3_manifest_and_listed_prefix(ray_cluster, bucket, tmp_path):
    tracks = good_tracks()
    for uri, data in tracks.values():
        storage.write_bytes(f"s3://{bucket}/{uri}", data)
    # a manifest on S3 with keys relative to it
    listed_in_manifest = {**{k: (u, None) for k, (u, _) in tracks.items()}, "gone": ("audio/gone.wav", None)}
    local_manifest = write_catalog(tmp_path, listed_in_manifest)
    storage.write_bytes(f"s3://{bucket}/catalog.parquet", local_manifest.read_bytes())
    root = f"s3://{bucket}/ws"

    report = extract.run_extract(f"s3://{bucket}/catalog.parquet", root, config=CONFIG)
    assert (report.done, report.failed, report.failures_by_kind) == (len(tracks), 1, {"missing": 1})
    features = read_features(root)
    assert sorted(features.column("track_id").to_pylist()) == sorted(tracks)
    assert all(u.startswith(f"s3://{bucket}/audio/") for u in features.column("uri").to_pylist())
    assert storage.exists(f"{root}/reports/extract-{report.run_id}/metrics.json")

    # a listed prefix: track ids are relative paths; ETag+size stand in for the content hash
    prefix_root = f"s3://{bucket}/ws-prefix"
    listed = extract.run_extract(f"s3://{bucket}/audio/", prefix_root, config=CONFIG)
    assert listed.done == len(tracks)
    ids = sorted(read_features(prefix_root).column("track_id").to_pylist())
    assert ids == sorted(u[len("audio/"):].rsplit(".", 1)[0] for u, _ in tracks.values())
    hashes = read_features(prefix_root).column("content_hash").to_pylist()
    assert all(h.startswith("etag:") for h in hashes)

    storage.write_bytes(f"s3://{bucket}/audio/a.wav", audio_bytes(3.0, "WAV", 44100, 2, freq=990))
    again = extract.run_extract(f"s3://{bucket}/audio/", prefix_root, config=CONFIG)
    assert (again.done, again.skipped, again.failed) == (1, len(tracks) - 1, 0)
