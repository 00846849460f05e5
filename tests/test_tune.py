"""Hyperparameter search with Ray Tune: end to end, best config into `musicray train`, resume."""

import json
import os
import signal
from dataclasses import fields

import pytest
from ray.tune import Callback

from models import GENERATORS, MODELS, SEARCH_SPACES
from musicray import storage
from musicray.checkpoints import load_trained
from musicray.features import FeatureConfig
from ray_jobs import extract, train, tune
from ray_jobs.train import TrainSettings
from ray_jobs.train_generator import GeneratorSettings

SMALL = {"dim": 32}  # fixed with --set: small models, and proof that fixed fields reach the best config


@pytest.fixture(scope="module")
def workspace(ray_cluster, tmp_path_factory):
    from musicray.demo import generate

    folder = tmp_path_factory.mktemp("tune")
    demo = generate(folder / "demo", tracks=24, users=60, seed=2, seconds=3.0)
    root = str(folder / "ws")
    assert extract.run_extract(str(demo.manifest), root, config=FeatureConfig(crop_seconds=3.0)).done == 24
    return demo, root


def test_every_search_space_names_real_fields_and_converts():
    for name, space in SEARCH_SPACES.items():
        settings = GeneratorSettings if name in GENERATORS else TrainSettings
        assert set(space["model"]) <= {f.name for f in fields(MODELS[name].Config)}, name
        assert set(space["train"]) <= {f.name for f in fields(settings)}, name
        assert set(tune.param_space(name, {})) == {"model", "train"}
    assert "dim" not in tune.param_space("lstm", {"dim": 32})["model"]  # fixed fields are not searched
    assert tune.sample_configs("rnn", {}, 3, seed=5) == tune.sample_configs("rnn", {}, 3, seed=5)
    with pytest.raises(ValueError, match="unknown kind 'normal'"):
        tune.to_tune({"x": ("normal", 0, 1)})


def test_bad_input_is_one_line_and_exit_code_2(workspace, tmp_path, capsys):
    demo, root = workspace
    base = ["--root", root, "--samples", "2"]
    assert tune.main(["--model", "lstm", *base[:2], "--samples", "0", "--sessions", str(demo.sessions_train)]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err
    assert tune.main(["--model", "dnn", *base]) == 2
    assert "--sessions) is required to tune 'dnn'" in capsys.readouterr().err
    assert tune.main(["--model", "rnn", *base, "--sessions", str(tmp_path / "absent.parquet")]) == 2
    assert "listening log not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--model", "transformer", *base])
    assert exit_info.value.code == 2


def test_search_writes_best_config_and_report_and_train_uses_it(workspace, capsys):
    demo, root = workspace
    sets = [arg for k, v in SMALL.items() for arg in ("--set", f"{k}={v}")]
    assert tune.main(["--model", "lstm", "--root", root, "--sessions", str(demo.sessions_train), "--samples", "3",
                      "--epochs", "2", "--name", "small", "--seed", "1", *sets]) == 0
    assert "lstm search small: best val_MRR@20" in capsys.readouterr().out

    best = json.loads(storage.read_text(f"{root}/models/lstm/best_config.json"))
    assert best["search"] == "small" and best["metric"] == "val_MRR@20" and 0 < best["value"] <= 1
    assert set(best["train"]) == set(SEARCH_SPACES["lstm"]["train"])
    assert best["model_config"]["dim"] == 32 and set(best["model_config"]) == set(SEARCH_SPACES["lstm"]["model"])
    report = f"{root}/reports/tune/small"
    rows = storage.read_text(f"{report}/trials.csv").strip().splitlines()
    assert len(rows) == 1 + 3 and rows[0].startswith("trial_id,status,epochs,val_MRR@20,best_epoch")
    best_row = [r for r in rows if r.startswith(best["trial_id"] + ",")]
    assert len(best_row) == 1 and ",done,2," in best_row[0]  # the best trial ran both epochs
    assert json.loads(storage.read_text(f"{report}/best_config.json")) == best
    assert storage.read_bytes(f"{report}/curves.png")[:4] == b"\x89PNG"
    assert f"Best: trial {best['trial_id']}" in storage.read_text(f"{report}/report.md")

    # musicray train takes the searched config; an explicit flag overrides one setting of it.
    args = ["train", "--model", "lstm", "--root", root, "--sessions", str(demo.sessions_train), "--epochs", "1"]
    parsed = train.parse_args(args[1:] + ["--lr", "0.0042", "--set", "hidden=48"])
    settings, model_config, source = train.configure(parsed, "lstm")
    assert settings.lr == 0.0042 and settings.batch_size == best["train"]["batch_size"]
    assert settings.weight_decay == best["train"]["weight_decay"] and settings.epochs == 1
    assert model_config == {**best["model_config"], "hidden": 48}
    assert "config from" in source and "best_config.json" in source and "overridden by --epochs, --lr, --set hidden" \
        in source
    settings, model_config, source = train.configure(train.parse_args(args[1:] + ["--no-best-config"]), "lstm")
    assert settings.lr == TrainSettings.lr and model_config == {} and "default config (--no-best-config)" in source

    from musicray import cli

    assert cli.main([*args, "--run-name", "from-search"]) == 0
    assert "lstm: config from" in capsys.readouterr().out
    trained = load_trained(root, "lstm")
    assert trained.run_id == "from-search"
    for field, value in best["model_config"].items():
        assert getattr(trained.model.config, field) == pytest.approx(value), field


class InterruptAfter(Callback):
    """Presses Ctrl+C (SIGINT to this process) once ``count`` trials have finished: Tune stops the
    search, saves its state and returns, as it does for a person interrupting it."""

    def __init__(self, count: int):
        self.count, self.finished = count, []

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished.append(trial.trial_id)
        if len(self.finished) == self.count:
            os.kill(os.getpid(), signal.SIGINT)


class Starts(Callback):
    def __init__(self):
        self.started = []

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.append(trial.trial_id)


def test_interrupted_search_resumes_without_rerunning_finished_trials(workspace):
    demo, root = workspace
    kwargs = dict(samples=4, name="resume", epochs=2, fixed=SMALL, publish=False, max_concurrent=1)
    interrupt, first = InterruptAfter(2), Starts()
    interrupted = tune.run_tune("rnn", root, str(demo.sessions_train), callbacks=[interrupt, first], **kwargs)
    finished = set(interrupt.finished)
    assert len(finished) == 2 and finished <= {r["trial_id"] for r in interrupted.trials}
    runs_before = {t: sorted(storage.list_dirs(f"{root}/tune/resume/runs/{t}")) for t in finished}

    second = Starts()
    resumed = tune.run_tune("rnn", root, str(demo.sessions_train), callbacks=[second], **kwargs)
    assert resumed.resumed and not finished & set(second.started)  # no finished trial ran again
    assert len(set(second.started)) >= 2  # the two left (an interrupted one continued, or new samples) ran
    assert len(resumed.trials) == 4 and finished < {r["trial_id"] for r in resumed.trials}
    assert all(r["status"] == "done" and r["epochs"] >= 1 for r in resumed.trials)
    # The finished trials' Train runs were not touched: the same checkpoints, none added.
    assert {t: sorted(storage.list_dirs(f"{root}/tune/resume/runs/{t}")) for t in finished} == runs_before
    assert not storage.exists(f"{root}/models/rnn/best_config.json")  # publish=False leaves train alone
