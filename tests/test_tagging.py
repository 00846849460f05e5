"""Tagging: the tagger learns the catalog's tag columns; its tags reach snapshots, the API and the report."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from musicray import snapshots, storage, workspace
from musicray.catalog import read_catalog
from musicray.content import TrackCatalog
from musicray.serving.api import recommend_api
from musicray.serving.errors import ClientError
from musicray.serving.recommend import RecommendRequest, RecommendService
from musicray.splits import train_validation_test
from musicray.tagging import NothingToLearn, load_tagger, predict, tag_column
from ray_jobs import evaluate as evaluate_job
from ray_jobs import refresh, train
from ray_jobs.tasks.tagger import TaggerSettings
from ray_jobs.train import run_train
from tests.workspace import publish_models

# The demo's eight styles, two moods: something a second tag column can learn from the same audio.
MOODS = {"ambient": "calm", "classical": "calm", "folk": "calm", "lofi": "calm",
         "chiptune": "lively", "jazz": "lively", "rock": "lively", "techno": "lively"}


def write_catalog(root: str, table: pa.Table) -> None:
    """Replace the workspace's catalog (as extract writes it: absolute uris, so it is a manifest too)."""
    pq.write_table(table, workspace.catalog_file(root))


@pytest.fixture(scope="module")
def tagged(demo, extracted, tmp_path_factory):
    """A copy of the demo workspace whose catalog has a mood column and leaves two training tracks
    without label or mood; a tagger trained on label and mood; two untrained recommenders; a refresh."""
    folder = tmp_path_factory.mktemp("tagging")
    root = str(folder / "ws")
    shutil.copytree(extracted, root)
    catalog = read_catalog(root).to_pandas()
    truth = dict(zip(catalog["track_id"], catalog["label"]))
    catalog["mood"] = catalog["label"].map(MOODS)
    train_ids, _, _ = train_validation_test(list(catalog["track_id"]))
    first = {}  # the first training track of two styles of different moods
    for track in train_ids:
        first.setdefault(MOODS[truth[track]], track)
    untagged = sorted(first.values())
    catalog.loc[catalog["track_id"].isin(untagged), ["label", "mood"]] = None
    manifest = str(folder / "catalog.parquet")
    catalog.to_parquet(manifest, index=False)
    write_catalog(root, pa.Table.from_pandas(catalog, preserve_index=False))

    settings = TaggerSettings(epochs=20, batch_size=8, max_failures=0, tags=("label", "mood"))
    result = run_train("tagger", root, settings=settings, run_id="tags")
    publish_models(root, sorted(catalog["track_id"])[:16])
    report = refresh.run_refresh(manifest, root)
    return {"root": root, "manifest": manifest, "result": result, "truth": truth, "untagged": untagged,
            "refresh": report}


def test_the_tagger_learns_styles_and_moods_from_audio(tagged):
    result = tagged["result"]
    # Validation macro-F1 of the style (8 values, chance ~0.125) selects the checkpoint.
    assert result.best["val_macro_F1"] >= 0.6 and result.best["val_label_macro_F1"] == result.best["val_macro_F1"]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 5
    assert result.info["train_tracks"] == len(train_validation_test(list(tagged["truth"]))[0]) - 2  # untagged left out

    # Every track the tagger never learned from (validation, test, and the two left untagged):
    # its most probable style is right far more often than chance.
    root, truth = tagged["root"], tagged["truth"]
    tagger = load_tagger(root, "tags")
    catalog = TrackCatalog.from_workspace(root, audio_run=tagger.audio_run)
    _, validation, test = train_validation_test(catalog.track_ids)
    unseen = [*validation, *test, *tagged["untagged"]]
    label_probabilities, mood_probabilities = predict(tagger, catalog.content)
    rows = [catalog.index[t] for t in unseen]
    styles = [tagger.heads[0]["values"][j] for j in label_probabilities[rows].argmax(1)]
    moods = [tagger.heads[1]["values"][j] for j in mood_probabilities[rows].argmax(1)]
    assert np.mean([s == truth[t] for s, t in zip(styles, unseen)]) >= 0.6
    assert np.mean([m == MOODS[truth[t]] for m, t in zip(moods, unseen)]) >= 0.6
    meta = json.loads(storage.read_text(storage.join(workspace.model_dir(root, "tagger", "tags"), "config.json")))
    assert meta["audio_run"] is None and meta["tag_columns"] == ["label", "mood"]


def test_a_refreshed_snapshot_holds_every_tracks_predicted_tags(tagged):
    snapshot = snapshots.latest_snapshot(tagged["root"])
    assert snapshot.manifest["tagger"]["run"] == "tags"
    assert set(snapshot.manifest["tagger"]["columns"]) == {"label", "mood"}
    rows = snapshot.vectors(["track_id", "tags_label", "tags_mood", "tagger_run"]).to_pylist()
    assert len(rows) == len(tagged["truth"]) and {r["tagger_run"] for r in rows} == {"tags"}
    for row in rows:
        probabilities = [t["probability"] for t in row["tags_label"]]
        assert len(probabilities) == 8 and probabilities == sorted(probabilities, reverse=True)
        assert abs(sum(probabilities) - 1.0) < 1e-4  # a categorical column: the whole distribution
        assert {t["value"] for t in row["tags_mood"]} == {"calm", "lively"}


def test_served_tracks_show_their_tags_and_filter_by_predicted_ones(tagged):
    service = RecommendService(tagged["root"], poll_seconds=3600)
    try:
        untagged = tagged["untagged"][0]
        info = service.track(untagged)
        assert info["label"] is None and info["mood"] is None and info["tagger_run"] == "tags"
        assert info["tags"]["mood"]["catalog"] is None
        predicted = info["tags"]["mood"]["predicted"]
        assert predicted[0]["probability"] >= predicted[1]["probability"] and len(predicted) == 2
        mood, label = predicted[0]["value"], info["tags"]["label"]["predicted"][0]["value"]
        tagged_track = next(t for t in tagged["truth"] if t not in tagged["untagged"])
        assert service.track(tagged_track)["tags"]["label"]["catalog"] == [tagged["truth"][tagged_track]]

        def mood_of(track: str) -> str:  # the catalog's, or else the tagger's most probable one
            described = service.track(track)
            return described["mood"] or described["tags"]["mood"]["predicted"][0]["value"]

        everything = len(tagged["truth"])
        with_mood = {t for t in tagged["truth"] if mood_of(t) == mood}
        assert with_mood >= {t for t, style in tagged["truth"].items() if MOODS[style] == mood} - set(tagged["untagged"])
        history = [t for t in tagged["truth"] if t != untagged][:2]
        by_mood = asyncio.run(service.recommend(RecommendRequest(history=history, k=everything, mood=mood)))
        found = {t.track_id for t in by_mood.tracks}
        assert untagged in found and found == with_mood - set(history)
        by_label = asyncio.run(service.recommend(RecommendRequest(history=history, k=everything, label=label)))
        ours = next(t for t in by_label.tracks if t.track_id == untagged)
        assert ours.label == label and ours.label_predicted
        assert {t.label for t in by_label.tracks} == {label}
        similar = service.similar(history[0], everything, None, {"mood": mood})
        assert untagged in {t["track_id"] for t in similar.tracks}
        assert {t["track_id"] for t in similar.tracks} == with_mood - {history[0]}

        for request, words in (({"mood": "gloomy"}, ["gloomy", "calm, lively"]),
                               ({"label": "polka"}, ["polka", "ambient", "techno"]),
                               ({"tags": {"instrument": "piano"}}, ["instrument", "label", "mood"])):
            with pytest.raises(ClientError) as error:
                asyncio.run(service.recommend(RecommendRequest(history=history, **request)))
            assert error.value.status == 422 and all(w in error.value.detail for w in words), error.value.detail
        with pytest.raises(ClientError, match="gloomy"):
            service.similar(history[0], 5, None, {"mood": "gloomy"})

        similar_route = recommend_api(service).openapi()["paths"]["/similar/{track_id}"]["get"]
        assert {"label", "mood", "tag"} <= {p["name"] for p in similar_route["parameters"]}
    finally:
        service.follower.close()


def test_evaluate_reports_tagging_against_the_mfcc_baseline(demo, tagged, tmp_path):
    out = tmp_path / "report"
    assert evaluate_job.main(["--root", tagged["root"], "--sessions-test", str(demo.sessions_test),
                              "--sessions-train", str(demo.sessions_train), "--out", str(out),
                              "--generation-tracks", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    tagging = metrics["tagging"]
    assert tagging["run"] == "tags" and set(tagging["columns"]) == {"label", "mood"}
    label = tagging["columns"]["label"]
    for model in ("tagger", "mfcc-statistics + logistic regression (baseline)"):
        assert label[model]["tracks"] == label["test_tracks"] == tagging["test_tracks"]
        assert 0.0 <= label[model]["accuracy"] <= 1.0 and 0.0 <= label[model]["macro_F1"] <= 1.0
        assert np.sum(label["confusion"][model]) == label["test_tracks"]
    assert (out / "tagging_confusion_label.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## Tagging" in report and "mfcc-statistics + logistic regression" in report
    assert "tagging_confusion_mood.png" in report
    # The catalog's mood column is scored like its labels: neighbours of the same mood, per track space.
    assert set(metrics["mood_precision@10"]) == set(metrics["label_precision@10"])
    assert "mood precision@10" in report


def test_a_catalog_with_nothing_to_learn_fails_in_one_clear_line(features_root, capsys):
    root = features_root
    catalog = read_catalog(root)

    def fails(table: pa.Table, *flags: str) -> str:
        write_catalog(root, table)
        assert train.main(["--model", "tagger", "--root", root, "--epochs", "1", *flags]) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and "Traceback" not in error
        return error

    no_labels = catalog.drop_columns(["label"])
    error = fails(no_labels)
    assert "nothing to learn" in error and "no 'label' column" in error and "title, artist" in error
    error = fails(catalog, "--tags", "label,genre")
    assert "nothing to learn" in error and "no 'genre' column" in error
    one_value = catalog.set_column(catalog.column_names.index("label"), "label", pa.array(["rock"] * len(catalog)))
    error = fails(one_value)
    assert "nothing to learn" in error and "1 distinct value(s) ('rock')" in error
    assert "holds double values" in fails(catalog, "--tags", "tempo_bpm")
    assert storage.read_pointer(workspace.model_pointer(root, "tagger")) is None


def test_tag_columns_follow_one_rule():
    table = pa.table({
        "track_id": ["a", "b", "c", "d"], "uri": ["a.wav"] * 4,
        "genre": ["rock", None, " ", "jazz"],
        "instrument": ["piano|strings", "piano", "", None],
        "instruments": pa.array([["piano", "strings"], [], None, ["drums", " "]]),
        "explicit": [True, False, None, True],
    })
    assert tag_column(table, "genre").kind == "categorical"
    assert tag_column(table, "genre").values == {"a": ("rock",), "d": ("jazz",)}
    assert tag_column(table, "instrument").kind == "multi-label"
    assert tag_column(table, "instrument").values == {"a": ("piano", "strings"), "b": ("piano",)}
    assert tag_column(table, "instruments").values == {"a": ("piano", "strings"), "d": ("drums",)}
    assert tag_column(table, "explicit").values == {"a": ("True",), "b": ("False",), "d": ("True",)}
    with pytest.raises(NothingToLearn, match="no 'mood' column .*genre, instrument, instruments, explicit"):
        tag_column(table, "mood")
