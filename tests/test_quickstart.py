"""The quickstart's guard rails and the progress counter its bars read.

The whole quickstart is run as a user runs it (README; its figures there); here, what must hold
without running it: a workspace it did not make is refused before any work, with one line that
says what to do, and the counter sums what Ray tasks and a restored copy add to it.
"""

from __future__ import annotations

import json

import pytest
import ray

from ray_jobs import quickstart
from ray_jobs.common import Progress


def run(capsys, tmp_path, *extra) -> tuple[int, str]:
    code = quickstart.main(["--root", str(tmp_path / "workspace"), "--demo", str(tmp_path / "demo"), *extra])
    return code, capsys.readouterr().err


def test_refuses_a_workspace_of_another_catalog(tmp_path, capsys):
    features = tmp_path / "workspace" / "features"
    features.mkdir(parents=True)
    (features / "part-0.parquet").write_bytes(b"someone else's features")

    code, err = run(capsys, tmp_path)

    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "did not make (features)" in err and "--root" in err
    assert not (tmp_path / "demo").exists()  # refused before any work
    assert (features / "part-0.parquet").read_bytes() == b"someone else's features"


def test_refuses_its_own_workspace_made_with_other_arguments(tmp_path, capsys):
    root = tmp_path / "workspace"
    root.mkdir()
    brief = quickstart.parse_args(["--root", str(root)])
    (root / quickstart.MARKER).write_text(json.dumps(quickstart.made_with(brief)))

    code, err = run(capsys, tmp_path, "--full")

    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"tracks {brief.tracks} (now {quickstart.PROFILES['full']['tracks']})" in err
    assert "rm -rf" in err


def test_reuses_its_own_workspace_and_a_new_folder(tmp_path):
    root = tmp_path / "workspace"
    args = quickstart.parse_args(["--root", str(root), "--demo", str(tmp_path / "demo")])
    quickstart.check_workspace(args)  # no folder yet: fine
    (root / "features").mkdir(parents=True)
    (root / quickstart.MARKER).write_text(json.dumps(quickstart.made_with(args)))
    quickstart.check_workspace(args)  # made by the quickstart with these arguments: reused


def test_profiles_and_explicit_flags():
    brief, full = quickstart.parse_args([]), quickstart.parse_args(["--full"])
    assert brief.tracks < full.tracks and brief.epochs < full.epochs
    assert quickstart.parse_args(["--full", "--epochs", "3"]).epochs == 3
    assert full.log.endswith("reports/quickstart/quickstart.log")
    assert quickstart.parse_args(["--verbose"]).log is None
    for bad in (["--tagger-epochs", "0"], ["--tracks", "-1"], ["--full", "--generation-tracks", "-1"]):
        with pytest.raises(SystemExit):
            quickstart.parse_args(bad)
    assert quickstart.parse_args(["--generation-tracks", "0"]).generation_tracks == 0


def test_progress_counts_what_tasks_and_copies_add(ray_cluster):
    progress = Progress("test-counter")

    # add() does not wait for the counter (a bar must never slow the work); a value() through the
    # same handle returns after that caller's adds, as Ray runs one caller's actor calls in order.
    @ray.remote(num_cpus=0)
    def work(counter: Progress, items: int) -> None:
        for _ in range(items):
            counter.add(1)
        counter.value()

    ray.get([work.remote(progress, 5), work.remote(progress, 7)])
    copy = Progress.__new__(Progress)
    copy.__setstate__(progress.__getstate__())  # as a restored Tune callback holds it: by name
    copy.add(3)
    copy.value()
    assert progress.value() == 15
    progress.reset()
    assert progress.value() == 0

    orphan = Progress.__new__(Progress)
    orphan.__setstate__({"name": "no-such-run"})
    orphan.add(1)  # a copy whose run has ended counts nothing and breaks nothing


@pytest.fixture(autouse=True)
def _no_ray_output_redirect(monkeypatch):
    # The refusals return before the console is redirected; nothing here may touch fds 1 and 2.
    monkeypatch.setattr(quickstart, "console_and_log", None)
