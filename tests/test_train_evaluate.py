"""Training on the Ray Train engine and evaluation, each test on its own copy of the demo workspace."""

import json

import pandas as pd
import pytest

from musicray import storage
from musicray import workspace as layout
from musicray.checkpoints import load_trained
from musicray.content import TrackCatalog
from musicray.baselines import Popularity
from musicray.metrics import evaluate
from musicray.sessions import load_log, make_examples, split_by_time
from ray_jobs import evaluate as evaluate_job
from ray_jobs import train
from ray_jobs.tasks.recommender import RecommenderSettings
from ray_jobs.train import run_train
from tests.faults import CrashAfterEpoch

FAST = RecommenderSettings(epochs=2, batch_size=32, max_failures=0)


def popularity_on_validation(root: str, sessions: str, fraction: float) -> dict:
    """Popularity's scores on the validation split a training run holds out of ``sessions``."""
    catalog = TrackCatalog.from_workspace(root)
    log = load_log(sessions)
    train_log, validation = split_by_time(log[log["track_id"].isin(catalog.index.keys())], fraction)
    return evaluate(Popularity(train_log, catalog.track_ids), make_examples(validation, catalog.track_ids))["all"]


def test_a_trained_lstm_beats_popularity_on_its_validation_split(demo, features_root):
    settings = RecommenderSettings(epochs=4, batch_size=32, max_failures=0)
    result = run_train("lstm", features_root, str(demo.sessions_train), settings=settings, run_id="learns")
    popularity = popularity_on_validation(features_root, str(demo.sessions_train), settings.validation_fraction)
    first, best = result.history[0], result.best
    assert best["val_MRR@20"] > popularity["MRR@20"] and best["val_HR@20"] > popularity["HR@20"]
    assert result.history[-1]["train_loss"] < first["train_loss"]


def test_killed_run_resumes_with_the_epoch_counter_continuing(demo, features_root):
    root = features_root
    settings = RecommenderSettings(epochs=3, batch_size=32, max_failures=0)
    # The worker dies right after reporting epoch 1, before Ray Train's controller may have
    # registered that checkpoint (or even epoch 0's): resuming must still start at epoch 2.
    with pytest.raises(Exception, match="(?i)fail|died|error"):
        run_train("rnn", root, str(demo.sessions_train), settings=settings, run_id="resume-me",
                  hooks=[CrashAfterEpoch(1)])
    assert storage.read_pointer(layout.model_pointer(root, "rnn")) is None  # nothing published by a failed run
    killed = [json.loads(storage.read_text(f.uri))["history"]
              for f in storage.list_files(layout.run_dir(root, "rnn", "resume-me"))
              if f.uri.endswith("config.json") and "/checkpoint_" in f.uri]

    result = run_train("rnn", root, str(demo.sessions_train), settings=settings, run_id="resume-me")
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.history[:2] == max(killed, key=len)  # epochs 0 and 1 restored, not trained again
    assert storage.read_pointer(layout.model_pointer(root, "rnn")) == "resume-me"


def test_every_model_trains_then_evaluates_against_baselines(demo, features_root, tmp_path):
    root, names = features_root, ("lstm", "rnn", "dnn", "autoencoder")
    results = train.run_trains({name: (FAST, {}) for name in names}, root, str(demo.sessions_train), run_id="run")
    for name, result in zip(names, results):
        assert result.model == name and len(result.history) == 2
        trained = load_trained(root, name)
        assert trained.run_id == "run" and trained.sessions == str(demo.sessions_train)

    out = str(tmp_path / "report")
    assert evaluate_job.main(["--root", root, "--sessions-test", str(demo.sessions_test), "--out", out]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(metrics["ranking"]) == {"popularity", "item-knn", "session-knn", "sequential-rules", "markov", *names}
    assert metrics["cold_examples"] > 0
    for name in names:
        assert set(metrics["ranking"][name]["all"]) >= {"HR@10", "MRR@10", "NDCG@10", "HR@20", "MRR@20", "NDCG@20"}
    assert metrics["ranking"]["popularity"]["cold"]["HR@20"] == 0.0  # cold tracks have no plays
    assert "mfcc-statistics (baseline)" in metrics["label_precision@10"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Cold targets" in report and "best baseline" in report
    for png in ("hit_rates.png", "training_curves.png", "track_map.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"


def test_sampled_softmax_path_trains(demo, features_root):
    settings = RecommenderSettings(epochs=1, batch_size=32, max_failures=0, full_softmax_max_tracks=10,
                                   negatives=16)
    result = run_train("lstm", features_root, str(demo.sessions_train), settings=settings, run_id="sampled")
    assert result.history[0]["train_loss"] > 0 and result.best["val_HR@20"] > 0


def test_bad_logs_and_names_are_clear(demo, features_root, tmp_path, capsys):
    root = features_root
    with pytest.raises(ValueError, match="valid models: lstm, rnn, dnn, autoencoder"):
        run_train("transformer", root, str(demo.sessions_train))
    log = pd.read_parquet(demo.sessions_train)
    log.iloc[:0].to_parquet(tmp_path / "empty.parquet")
    log.drop(columns=["ts"]).to_parquet(tmp_path / "no-ts.parquet")
    args = ["--model", "lstm", "--root", root, "--epochs", "1", "--sessions"]
    assert train.main(args + [str(tmp_path / "empty.parquet")]) == 2
    assert "is empty" in capsys.readouterr().err
    assert train.main(args + [str(tmp_path / "no-ts.parquet")]) == 2
    assert "lacks required column(s) ['ts']" in capsys.readouterr().err
    assert train.main(args + [str(tmp_path / "absent.parquet")]) == 2
    assert "listening log not found" in capsys.readouterr().err
