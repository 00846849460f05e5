"""The real-music catalog (benchmarks/catalogs/real_music.py) at a tiny size: audio, metadata, sessions,
determinism, reuse, and pieces that fail."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from musicray.audio import decode

real_music = pytest.importorskip("benchmarks.catalogs.real_music", reason="music21 is a dev dependency")

if shutil.which("fluidsynth") is None or not Path(real_music.SOUNDFONT).is_file():
    if os.environ.get("CI"):  # .ci/run installs them: missing there is a failure, not a skip
        raise RuntimeError("fluidsynth and fluid-soundfont-gm must be installed in CI (.ci/run installs them)")
    pytest.skip("needs fluidsynth and fluid-soundfont-gm (apt-get install fluidsynth fluid-soundfont-gm)",
                allow_module_level=True)

STYLES = ["bach chorale", "irish fiddle tune", "chinese folk song"]
TINY = dict(tracks=9, users=30, seconds=10.0, seed=2, styles=STYLES)
TABLES = ("catalog.parquet", "sessions_train.parquet", "sessions_test.parquet", "cold_tracks.txt")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return real_music.build(tmp_path_factory.mktemp("real"), workers=2, progress=None, **TINY)


@pytest.fixture(scope="module")
def catalog(tiny) -> pd.DataFrame:
    return pd.read_parquet(tiny.manifest)


def sessions(built) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(built.sessions_train), pd.read_parquet(built.sessions_test)


def test_layout_and_counts(tiny, catalog):
    root = tiny.root
    assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(catalog.uri.str.removeprefix("audio/"))
    assert sorted(p.stem for p in (root / "renders").iterdir()) == sorted(catalog.track_id)
    assert (root / "cold_tracks.txt").read_text().split() == list(tiny.cold_tracks)
    assert catalog.label.value_counts().to_dict() == dict.fromkeys(STYLES, 3)
    assert catalog.track_id.is_unique and catalog.track_id.is_monotonic_increasing
    assert (catalog.uri == "audio/" + catalog.track_id + ".ogg").all()
    assert tiny.pieces_in == tiny.done + tiny.skipped + len(tiny.failed) == 9
    summary = json.loads((root / "manifest.json").read_text())
    assert summary["tracks"] == 9 and summary["styles"] == dict.fromkeys(STYLES, 3)
    assert sum(summary["moods"].values()) == 9
    assert summary["pieces"] == {"in": 9, "done": tiny.done, "skipped": tiny.skipped, "failed": len(tiny.failed)}
    assert summary["cold_tracks"] == len(tiny.cold_tracks) == 1  # 10% of 9
    assert summary["plays"] == {"train": len(sessions(tiny)[0]), "test": len(sessions(tiny)[1])}


def test_audio_decodes_to_the_excerpt_length_and_is_music(tiny, catalog):
    for row in catalog.itertuples():
        clip = decode((tiny.root / row.uri).read_bytes(), sample_rate=22050, crop_seconds=None)
        assert clip.source_sample_rate == row.sample_rate == 22050 and clip.source_channels == row.channels == 1
        assert len(clip.samples) == round(row.duration_s * 22050) == 10 * 22050, row.track_id
        samples = clip.samples
        assert 0.05 < np.sqrt(np.mean(samples ** 2)) < 0.2, row.track_id  # set to -20 dBFS RMS before encoding
        assert np.abs(samples).max() <= 1.0
        # Sound all through, not one blip: most half-seconds carry energy.
        halves = samples[: len(samples) // 11025 * 11025].reshape(-1, 11025)
        assert (np.sqrt((halves ** 2).mean(axis=1)) > 0.01).mean() > 0.7, row.track_id


def test_metadata_is_filled_in_by_the_documented_rules(tiny, catalog):
    assert pq.read_schema(tiny.manifest).names == real_music._CATALOG_SCHEMA.names
    assert catalog.notna().all().all()
    for row in catalog.itertuples():
        style = real_music._STYLE[row.label]
        assert row.title and row.artist and row.composer, row
        assert row.composer == ("J. S. Bach" if row.label == "bach chorale" else "Traditional")
        assert row.mode in ("major", "minor") and row.key in real_music._KEY_NAMES
        assert row.mood == real_music.mood(row.mode, row.activity)
        assert row.activity > 0
        assert set(row.programs) <= set(style.programs) and len(row.programs) >= 1
        assert len(row.instruments) == len(set(row.programs))
        assert -3 <= row.transpose <= 3 and row.offset_s >= 0
        low, high = style.beat
        bounds = (low, high) if row.tempo_source == "style" else (0.75 * low, 1.25 * high)
        assert 0.94 * bounds[0] <= row.tempo_bpm <= 1.06 * bounds[1], row
        source = row.source.split("#")[0]
        assert (real_music.corpus_root() / source).is_file()
    assert set(catalog[catalog.label == "bach chorale"].programs.map(len)) >= {4}  # SATB, one program each


def test_sessions_follow_the_documented_structure(tiny, catalog):
    train, test = sessions(tiny)
    for path in (tiny.sessions_train, tiny.sessions_test):
        schema = pq.read_schema(path)
        assert schema.names == ["user_id", "session_id", "track_id", "ts"]
        assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    for plays in (train, test):
        order = plays.sort_values(["user_id", "session_id", "ts"], kind="stable").index
        assert (order == plays.index).all()
        assert set(plays.track_id) <= set(catalog.track_id)
        assert (plays.groupby("session_id").size().between(3, 20)).all()
    cold = set(tiny.cold_tracks)
    assert cold and not cold & set(train.track_id)  # cold tracks: never in train ...
    assert cold <= set(test.track_id)  # ... and every one played in test
    assert set(test.user_id) <= set(train.user_id)  # every test user has history
    assert not set(train.session_id) & set(test.session_id)
    cutoff = pd.Timestamp("2026-02-19", tz="UTC")
    assert train.groupby("session_id").ts.min().max() < cutoff <= test.groupby("session_id").ts.min().min()
    plays = pd.concat([train, test])
    assert (plays.track_id != plays.groupby("session_id").track_id.shift()).all()  # never the same track twice running


def test_same_arguments_give_the_same_catalog_and_a_rerun_reuses_the_files(tiny, tmp_path):
    before = {name: (tiny.root / name).read_bytes() for name in TABLES}
    again = real_music.build(tiny.root, workers=1, progress=None, **TINY)
    assert (again.done, again.skipped, again.failed) == (0, 9, ())
    assert {name: (tiny.root / name).read_bytes() for name in TABLES} == before

    elsewhere = real_music.build(tmp_path, workers=1, progress=None, **TINY)  # rendered anew, one worker
    assert elsewhere.done == 9
    for name in TABLES:
        assert (tmp_path / name).read_bytes() == before[name], name
    for path in sorted((tiny.root / "audio").iterdir()):
        assert (tmp_path / "audio" / path.name).read_bytes() == path.read_bytes(), path.name


def test_another_seed_gives_other_tracks(catalog, tmp_path):
    other = real_music.build(tmp_path, workers=1, progress=None, **{**TINY, "tracks": 3, "seed": 3})
    assert not set(pd.read_parquet(other.manifest).track_id) & set(catalog.track_id)


def test_a_piece_that_fails_is_counted_and_replaced(tmp_path, monkeypatch):
    candidates = real_music._candidates

    def with_a_broken_piece(style, corpus):  # bach: a missing file and one real chorale
        pieces = candidates(style, corpus)
        if style.label == "bach chorale":
            return [real_music._Piece(style.label, "bach/no-such-chorale.mxl", None), pieces[0]]
        return pieces

    monkeypatch.setattr(real_music, "_candidates", with_a_broken_piece)
    built = None
    for seed in range(20):  # the seeded order puts the broken piece first for about every other seed
        built = real_music.build(tmp_path / str(seed), tracks=2, users=10, seconds=3.0, seed=seed, workers=1,
                                 styles=["bach chorale", "chinese folk song"], progress=None)
        if built.failed:
            break
    assert built.failed and built.failed[0][0] == "bach/no-such-chorale.mxl"
    assert "music21 cannot parse it" in built.failed[0][1]
    assert built.pieces_in == built.done + built.skipped + len(built.failed) == 3
    table = pd.read_parquet(built.manifest)
    assert table.label.value_counts().to_dict() == {"bach chorale": 1, "chinese folk song": 1}  # replaced
    summary = json.loads((built.root / "manifest.json").read_text())
    assert summary["failures"] == [{"piece": "bach/no-such-chorale.mxl", "reason": built.failed[0][1]}]


def test_nothing_that_renders_is_a_clear_error(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"  # a fluidsynth that fails every render
    bin_dir.mkdir()
    (bin_dir / "fluidsynth").write_text("#!/bin/sh\necho 'cannot open the audio file' >&2\nexit 3\n")
    (bin_dir / "fluidsynth").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match=r"no piece could be rendered \(20 failed; the first: .*fluidsynth failed "
                                           r"\(exit 3\): cannot open the audio file"):
        real_music.build(tmp_path / "out", tracks=2, users=5, seconds=2.0, workers=1,
                         styles=["chinese folk song", "german folk song"], progress=None)


def test_a_file_that_is_not_a_soundfont_is_refused(tmp_path):
    not_a_soundfont = tmp_path / "broken.sf2"  # fluidsynth itself would quietly play its default soundfont
    not_a_soundfont.write_bytes(b"not a soundfont")
    with pytest.raises(RuntimeError, match="not a SoundFont 2 file"):
        real_music.build(tmp_path / "out", tracks=2, users=5, seconds=2.0, workers=1, styles=["chinese folk song"],
                         soundfont=str(not_a_soundfont), progress=None)


@pytest.mark.parametrize("arguments, name", [
    ({"tracks": 0}, "tracks"),
    ({"tracks": 2, "styles": STYLES}, "tracks"),
    ({"users": 0}, "users"),
    ({"seed": -1}, "seed"),
    ({"seconds": 0.5}, "seconds"),
    ({"seconds": float("nan")}, "seconds"),
    ({"workers": 0}, "workers"),
    ({"styles": ["polka"]}, "styles"),
])
def test_invalid_arguments_are_rejected(tmp_path, arguments, name):
    out = tmp_path / "real"
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        real_music.build(out, progress=None, **arguments)
    assert not out.exists()
