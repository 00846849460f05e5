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
from musicray import cli
from ray_jobs import train, tune
from ray_jobs.tasks.recommender import RecommenderSettings
from ray_jobs.tasks.generator import GeneratorSettings

SMALL = {"dim": 32}  # fixed with --set: small models, and proof that fixed fields reach the best config


@pytest.fixture
def workspace(demo, features_root):
    return demo, features_root


def test_every_search_space_names_real_fields_and_converts():
    for name, space in SEARCH_SPACES.items():
        settings = GeneratorSettings if name in GENERATORS else RecommenderSettings
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


class Markers(Callback):
    """Leaves a file in ``folder`` for every trial start and finish, and presses Ctrl+C (SIGINT to
    this process) once ``interrupt_after`` trials have finished: Tune stops the search, saves its
    state and returns, as it does for a person interrupting it. Tune keeps a search's callbacks
    with it, so the restored search leaves its markers in the same folder."""

    def __init__(self, folder, interrupt_after: int):
        self.folder, self.interrupt_after = folder, interrupt_after

    def on_trial_start(self, iteration, trials, trial, **info):
        (self.folder / f"start-{trial.trial_id}-{len(list(self.folder.glob('start-*')))}").touch()

    def on_trial_complete(self, iteration, trials, trial, **info):
        (self.folder / f"done-{trial.trial_id}").touch()
        interrupted = self.folder / "interrupted"
        if len(list(self.folder.glob("done-*"))) == self.interrupt_after and not interrupted.exists():
            interrupted.touch()
            os.kill(os.getpid(), signal.SIGINT)

    def trials(self, kind: str) -> list[str]:
        return sorted(p.name.split("-")[1] for p in self.folder.glob(f"{kind}-*"))


def test_interrupted_search_resumes_then_train_uses_its_best_config(workspace, tmp_path, capsys):
    demo, root = workspace
    markers = Markers(tmp_path, interrupt_after=2)
    kwargs = dict(samples=3, name="resume", epochs=2, fixed=SMALL)  # 2 trials at a time on the 2 CPUs
    interrupted = tune.run_tune("lstm", root, str(demo.sessions_train), callbacks=[markers], **kwargs)
    finished = set(markers.trials("done"))
    assert len(finished) == 2 and not interrupted.complete
    assert not storage.exists(f"{root}/models/lstm/best_config.json")  # nothing published by a partial search
    starts_before = markers.trials("start")

    resumed = tune.run_tune("lstm", root, str(demo.sessions_train), **kwargs)
    assert resumed.resumed and resumed.complete
    # Every finished trial started exactly once, across both runs; the third ran after the restore.
    starts = markers.trials("start")
    assert all(starts.count(t) == 1 for t in finished)
    assert len(starts) > len(starts_before) and len(set(markers.trials("done"))) == 3
    assert len(resumed.trials) == 3 and finished < {r["trial_id"] for r in resumed.trials}
    assert all(r["status"] == "done" and r["epochs"] >= 1 for r in resumed.trials)
    assert resumed.epochs_spent == sum(r["epochs"] for r in resumed.trials) <= 3 * 2

    best = json.loads(storage.read_text(f"{root}/models/lstm/best_config.json"))
    assert best["search"] == "resume" and best["metric"] == "val_MRR@20" and 0 < best["value"] <= 1
    assert best["value"] == max(r["val_MRR@20"] for r in resumed.trials)
    assert set(best["train"]) == set(SEARCH_SPACES["lstm"]["train"])
    assert best["model_config"]["dim"] == 32 and set(best["model_config"]) == set(SEARCH_SPACES["lstm"]["model"])
    report = f"{root}/reports/tune/resume"
    rows = storage.read_text(f"{report}/trials.csv").strip().splitlines()
    assert len(rows) == 1 + 3 and rows[0].startswith("trial_id,status,epochs,val_MRR@20,best_epoch")
    assert json.loads(storage.read_text(f"{report}/best_config.json")) == best
    assert storage.read_bytes(f"{report}/curves.png")[:4] == b"\x89PNG"
    assert f"Best: trial {best['trial_id']}" in storage.read_text(f"{report}/report.md")

    # musicray train takes the searched config; explicit flags override parts of it.
    args = ["train", "--model", "lstm", "--root", root, "--sessions", str(demo.sessions_train), "--epochs", "1"]
    settings, model_config, source = train.configure(train.parse_args(args[1:] + ["--lr", "0.0042", "--set",
                                                                                  "hidden=48"]), "lstm")
    assert settings.lr == 0.0042 and settings.batch_size == best["train"]["batch_size"]
    assert settings.weight_decay == best["train"]["weight_decay"] and settings.epochs == 1
    assert model_config == {**best["model_config"], "hidden": 48}
    assert "best_config.json (search 'resume'" in source and "overridden by --epochs, --lr, --set hidden" in source
    settings, model_config, source = train.configure(train.parse_args(args[1:] + ["--no-best-config"]), "lstm")
    assert settings.lr == RecommenderSettings.lr and model_config == {} and "default config (--no-best-config)" in source

    capsys.readouterr()
    assert cli.main([*args, "--run-name", "from-search"]) == 0
    assert "lstm: config from" in capsys.readouterr().out
    trained = load_trained(root, "lstm")
    assert trained.run_id == "from-search"
    for field, value in best["model_config"].items():
        assert getattr(trained.model.config, field) == pytest.approx(value), field


def test_generator_search_selects_on_validation_loss(workspace):
    demo, root = workspace
    outcome = tune.run_tune("generator", root, None, samples=1, name="gen", epochs=1,
                            fixed={"codebook_size": 32, "hidden": 32, "dim": 16, "layers": 1}, publish=False)
    assert outcome.complete and outcome.metric == "val_loss" and outcome.mode == "min"
    assert outcome.best["value"] > 0 and outcome.best["model_config"]["hidden"] == 32
    assert set(outcome.best["train"]) == set(SEARCH_SPACES["generator"]["train"])
    assert not storage.exists(f"{root}/models/generator/best_config.json")  # publish=False
