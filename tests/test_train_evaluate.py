"""Training on Ray Train and evaluation, on a small demo workspace."""

import json

import pandas as pd
import pytest

from musicray import storage
from musicray import workspace as layout
from musicray.checkpoints import load_trained
from musicray.features import FeatureConfig
from ray_jobs import evaluate, extract, train
from ray_jobs.train import TrainSettings, run_train

FAST = TrainSettings(epochs=2, batch_size=32, max_failures=0)


@pytest.fixture(scope="module")
def workspace(ray_cluster, tmp_path_factory):
    from musicray.demo import generate

    folder = tmp_path_factory.mktemp("demo")
    demo = generate(folder / "demo", tracks=32, users=80, seed=1, seconds=4.0)
    root = str(folder / "ws")
    report = extract.run_extract(str(demo.manifest), root, config=FeatureConfig(crop_seconds=4.0))
    assert report.done == 32
    return demo, root


def test_killed_run_resumes_with_the_epoch_counter_continuing(workspace):
    demo, root = workspace
    settings = TrainSettings(epochs=3, batch_size=32, max_failures=0)
    # The worker dies right after reporting epoch 1, before Ray Train's controller may have
    # registered that checkpoint (or even epoch 0's): resuming must still start at epoch 2.
    with pytest.raises(Exception, match="(?i)fail|died|error"):
        run_train("rnn", root, str(demo.sessions_train), settings=settings, run_id="resume-me", crash_after_epoch=1)
    assert storage.read_pointer(layout.model_pointer(root, "rnn")) is None  # nothing published by a failed run
    killed = [json.loads(storage.read_text(f.uri))["history"] for f in storage.list_files(f"{root}/models/rnn/resume-me")
              if f.uri.endswith("config.json") and "/checkpoint_" in f.uri]

    result = run_train("rnn", root, str(demo.sessions_train), settings=settings, run_id="resume-me")
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.history[:2] == max(killed, key=len)  # epochs 0 and 1 restored, not trained again
    assert storage.read_pointer(layout.model_pointer(root, "rnn")) == "resume-me"


def test_every_model_trains_then_evaluates_against_baselines(workspace, tmp_path):
    demo, root = workspace
    for name in ("lstm", "dnn", "autoencoder"):
        result = run_train(name, root, str(demo.sessions_train), settings=FAST, run_id=f"{name}-run")
        assert len(result.history) == 2 and result.best["val_MRR@20"] > 0
        trained = load_trained(root, name)
        assert trained.run_id == f"{name}-run" and trained.sessions == str(demo.sessions_train)

    out = str(tmp_path / "report")
    assert evaluate.main(["--root", root, "--sessions-test", str(demo.sessions_test), "--out", out]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    scorers = set(metrics["ranking"])
    assert {"popularity", "item-knn", "session-knn", "sequential-rules", "markov", "lstm", "dnn",
            "autoencoder", "rnn"} <= scorers
    assert metrics["cold_examples"] > 0
    for name in ("lstm", "dnn", "autoencoder"):
        assert set(metrics["ranking"][name]["all"]) >= {"HR@10", "MRR@10", "NDCG@10", "HR@20", "MRR@20", "NDCG@20"}
    assert metrics["ranking"]["popularity"]["cold"]["HR@20"] == 0.0  # cold tracks have no plays
    assert "mfcc-statistics (baseline)" in metrics["label_precision@10"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Cold targets" in report and "best baseline" in report
    for png in ("hit_rates.png", "training_curves.png", "track_map.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"


def test_sampled_softmax_path_trains(workspace):
    demo, root = workspace
    settings = TrainSettings(epochs=1, batch_size=32, max_failures=0, full_softmax_max_tracks=10, negatives=16)
    result = run_train("lstm", root, str(demo.sessions_train), settings=settings, run_id="sampled")
    assert result.history[0]["train_loss"] > 0 and result.best["val_HR@20"] > 0


def test_bad_logs_and_names_are_clear(workspace, tmp_path, capsys):
    demo, root = workspace
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
