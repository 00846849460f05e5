"""The demo catalog generator: audio files, manifest, sessions, determinism and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from scipy import signal

from musicray.demo import STYLES, DemoCatalog, generate

SMALL = dict(tracks=16, users=40, seed=3, seconds=3.0)  # two tracks per style
MP3_FRAME = 1152  # samples per MPEG audio frame: the most a decoder's length may be off by


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> DemoCatalog:
    return generate(tmp_path_factory.mktemp("small"), workers=1, **SMALL)


@pytest.fixture(scope="module")
def catalog(small) -> pd.DataFrame:
    return pd.read_parquet(small.manifest)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> DemoCatalog:
    """Enough tracks and users for play-count statistics; the audio is kept short."""
    return generate(tmp_path_factory.mktemp("large"), tracks=80, users=300, seed=1, seconds=0.2)


def sessions(demo: DemoCatalog) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(demo.sessions_train), pd.read_parquet(demo.sessions_test)


# -- audio and manifest -----------------------------------------------------------------------------

def test_writes_the_documented_layout(small, catalog):
    root = small.root
    assert small.manifest == root / "catalog.parquet"
    assert small.sessions_train == root / "sessions_train.parquet"
    assert small.sessions_test == root / "sessions_test.parquet"
    assert (root / "cold_tracks.txt").read_text().split() == list(small.cold_tracks)
    assert sorted(path.name for path in (root / "audio").iterdir()) == sorted(catalog.uri.str.removeprefix("audio/"))


def test_manifest_schema_and_order(small, catalog):
    schema = pq.read_schema(small.manifest)
    assert schema.names == ["track_id", "uri", "label", "title", "artist", "mode", "key", "tempo_bpm", "format",
                            "sample_rate", "channels", "duration_s"]
    assert schema.field("tempo_bpm").type == pa.float64()
    assert pa.types.is_integer(schema.field("sample_rate").type)
    assert pa.types.is_integer(schema.field("channels").type)
    assert len(catalog) == SMALL["tracks"]
    assert catalog.track_id.is_unique and catalog.track_id.is_monotonic_increasing
    assert (catalog.uri == "audio/" + catalog.track_id + "." + catalog.format).all()
    assert set(catalog.label) == set(STYLES)
    assert (catalog.duration_s == SMALL["seconds"]).all()
    # Artists belong to a single style.
    assert (catalog.groupby("artist").label.nunique() == 1).all()


def test_every_file_decodes_as_declared(small, catalog):
    for row in catalog.itertuples():
        path = small.root / row.uri
        info = sf.info(path)
        assert info.samplerate == row.sample_rate, row.track_id
        assert info.channels == row.channels, row.track_id
        audio, rate = sf.read(path, always_2d=True)
        tolerance = MP3_FRAME if row.format == "mp3" else 0
        assert abs(len(audio) - row.duration_s * rate) <= tolerance, row.track_id
        assert audio.shape[1] == row.channels
        assert np.isfinite(audio).all()
        peak = np.abs(audio).max()
        assert 0.5 < peak <= 1.0, (row.track_id, peak)  # normalised to ~0.9; lossy codecs overshoot a little


def test_formats_sample_rates_and_channels_are_mixed(catalog):
    assert catalog.format.value_counts().to_dict() == {"flac": 4, "mp3": 4, "ogg": 4, "wav": 4}
    assert set(catalog.sample_rate) == {22050, 32000, 44100, 48000}
    assert set(catalog.channels) == {1, 2}


def test_stereo_channels_differ(small, catalog):
    stereo = catalog[catalog.channels == 2]
    for row in stereo.itertuples():
        audio, _ = sf.read(small.root / row.uri)
        assert not np.allclose(audio[:, 0], audio[:, 1], atol=1e-3), row.track_id


def test_tempo_is_within_each_styles_range(catalog):
    ranges = {"ambient": (60, 80), "techno": (122, 132), "rock": (100, 140), "jazz": (110, 170),
              "chiptune": (140, 180), "lofi": (70, 90), "classical": (60, 100), "folk": (90, 120)}
    for row in catalog.itertuples():
        low, high = ranges[row.label]
        assert low <= row.tempo_bpm <= high, row


def _spectral_stats(path) -> tuple[float, float]:
    """(log10 share of power above 4 kHz, mean positive spectral flux of the log power)."""
    audio, rate = sf.read(path, always_2d=True)
    freqs, _, spectrum = signal.stft(audio.mean(axis=1), rate, nperseg=1024, noverlap=512)
    power = np.abs(spectrum) ** 2
    high_share = power[freqs > 4000].sum() / power.sum()
    log_power = np.log10(power + 1e-10)
    return math.log10(high_share + 1e-12), np.maximum(np.diff(log_power, axis=1), 0).mean()


def test_styles_are_spectrally_distinct(small, catalog):
    stats = pd.DataFrame([_spectral_stats(small.root / uri) for uri in catalog.uri],
                         columns=["high_share", "flux"], index=catalog.label)
    # Low-passed lofi and dark ambient pads keep far less energy above 4 kHz than pulse waves,
    # distorted guitars and hi-hats: at least 3x less, track by track.
    dark, bright = stats.loc[["ambient", "lofi"]], stats.loc[["chiptune", "rock", "techno"]]
    assert dark.high_share.max() < bright.high_share.min() - math.log10(3)
    # Without drums, ambient and classical change far less from frame to frame than drum-driven styles.
    calm, driven = stats.loc[["ambient", "classical"]], stats.loc[["techno", "rock", "chiptune", "jazz"]]
    assert calm.flux.max() < 0.75 * driven.flux.min()


# -- determinism ------------------------------------------------------------------------------------

def test_same_arguments_give_identical_output_whatever_the_workers(small, catalog, tmp_path):
    again = generate(tmp_path, workers=2, **SMALL)
    for name in ("catalog.parquet", "sessions_train.parquet", "sessions_test.parquet", "cold_tracks.txt"):
        assert (again.root / name).read_bytes() == (small.root / name).read_bytes(), name
    for uri in catalog.uri:
        first, _ = sf.read(small.root / uri, dtype="int16")
        second, _ = sf.read(again.root / uri, dtype="int16")
        np.testing.assert_array_equal(first, second, err_msg=uri)


def test_rerun_into_the_same_folder_overwrites(tmp_path):
    def tables() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in tmp_path.glob("*.parquet")}

    arguments = dict(tracks=24, users=5, seconds=0.5, workers=1)
    generate(tmp_path, **arguments)
    first_tables, flac = tables(), sorted((tmp_path / "audio").glob("*.flac"))[0]
    first_samples = sf.read(flac)[0]
    generate(tmp_path, **{**arguments, "tracks": 16})
    assert len(list((tmp_path / "audio").iterdir())) == 16  # the larger run's extra tracks are gone
    generate(tmp_path, **arguments)
    assert tables() == first_tables
    np.testing.assert_array_equal(sf.read(flac)[0], first_samples)


def test_another_seed_gives_another_catalog(small, catalog, tmp_path):
    other = pd.read_parquet(generate(tmp_path, workers=1, **{**SMALL, "seed": 4}).manifest)
    assert not other[["label", "tempo_bpm", "format"]].equals(catalog[["label", "tempo_bpm", "format"]])


# -- sessions ---------------------------------------------------------------------------------------

def test_sessions_schema_and_order(small, catalog):
    for path in (small.sessions_train, small.sessions_test):
        schema = pq.read_schema(path)
        assert schema.names == ["user_id", "session_id", "track_id", "ts"]
        assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
        assert all(schema.field(name).type == pa.string() for name in ("user_id", "session_id", "track_id"))
        plays = pd.read_parquet(path)
        assert not plays.empty
        order = plays.sort_values(["user_id", "session_id", "ts"], kind="stable").index
        assert (order == plays.index).all()
        assert set(plays.track_id) <= set(catalog.track_id)


def test_sessions_are_split_by_time(small):
    train, test = sessions(small)
    assert not set(train.session_id) & set(test.session_id)
    starts = {name: plays.groupby("session_id").ts.min() for name, plays in (("train", train), ("test", test))}
    assert starts["train"].max() < starts["test"].min()
    cutoff = pd.Timestamp("2026-02-19", tz="UTC")
    assert starts["train"].max() < cutoff <= starts["test"].min()
    assert set(test.user_id) <= set(train.user_id)  # every test user has history


def test_session_lengths_and_gaps(small):
    plays = pd.concat(sessions(small))
    lengths = plays.groupby("session_id").size()
    assert lengths.between(3, 20).all()
    gaps = plays.groupby("session_id").ts.diff().dropna().dt.total_seconds()
    assert gaps.between(60, 180).all()
    assert (plays.track_id != plays.groupby("session_id").track_id.shift()).all()  # no immediate repeats


def test_cold_tracks_are_played_in_test_only(small, large):
    for demo in (small, large):
        train, test = sessions(demo)
        cold = set(demo.cold_tracks)
        assert cold, "some tracks must be cold"
        assert not cold & set(train.track_id)
        assert cold <= set(test.track_id)
    catalog = pd.read_parquet(large.manifest)
    assert 0.08 <= len(large.cold_tracks) / len(catalog) <= 0.1
    assert catalog.set_index("track_id").loc[list(large.cold_tracks)].label.nunique() >= 5  # spread over styles


def test_popularity_is_skewed(large):
    train, _ = sessions(large)
    counts = train.track_id.value_counts()
    catalog_size = len(pd.read_parquet(large.manifest))
    top = counts.iloc[: catalog_size // 10].sum() / len(train)
    assert top > 2 * 0.10  # the top 10% of tracks get more than twice their uniform share
    assert 15 <= len(pd.concat(sessions(large))) / 300 <= 30  # plays per user


def test_sessions_stick_to_a_style_and_follow_the_clock(large):
    train, _ = sessions(large)
    labels = pd.read_parquet(large.manifest).set_index("track_id").label
    style, hour = train.track_id.map(labels), train.ts.dt.hour
    within = train.session_id == train.session_id.shift()
    assert (style == style.shift())[within].mean() > 0.6
    calm = style.isin(["ambient", "classical", "lofi"])  # styles that peak at night and in the morning
    night, evening = calm[hour.between(0, 5)].mean(), calm[hour.between(17, 22)].mean()
    assert night > 2 * evening


# -- arguments --------------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, name", [
    ({"tracks": 15}, "tracks"),
    ({"tracks": 0}, "tracks"),
    ({"tracks": 20.0}, "tracks"),
    ({"users": 0}, "users"),
    ({"seed": -1}, "seed"),
    ({"seconds": 0}, "seconds"),
    ({"seconds": -2.0}, "seconds"),
    ({"seconds": float("nan")}, "seconds"),
    ({"workers": 0}, "workers"),
])
def test_invalid_arguments_are_rejected(tmp_path, arguments, name):
    out = tmp_path / "demo"
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        generate(out, **arguments)
    assert not out.exists()
