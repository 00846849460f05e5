"""Proof that an install works, in seconds: every module imports and the command line answers.

    python scripts/smoke.py

Run by ``make test`` (and so by CI) before the suite: a package that does not load (a wheel
built against another torch, a missing dependency) fails here with its import error, not as a
hundred test failures.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("musicray", "models", "ray_jobs")


def main() -> int:
    started, failures, count = time.perf_counter(), [], 0
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names = [package_name] + [m.name for m in pkgutil.walk_packages(package.__path__, f"{package_name}.")]
        for name in names:
            count += 1
            try:
                importlib.import_module(name)
            except Exception as error:  # noqa: BLE001 - every failure is reported, then the run fails
                failures.append(f"{name}: {type(error).__name__}: {error}")
    # The console script the install put beside this interpreter, as a user runs it.
    command = Path(sys.executable).parent / "musicray"
    help_run = subprocess.run([str(command), "--help"], capture_output=True, text=True)
    if help_run.returncode != 0 or "usage: musicray" not in help_run.stdout:
        failures.append(f"musicray --help exited {help_run.returncode}: {help_run.stderr.strip()[-500:]}")
    for failure in failures:
        print(f"smoke: {failure}", file=sys.stderr)
    print(f"smoke: {count} modules imported, musicray --help answered in {time.perf_counter() - started:.1f} s"
          + (f"; {len(failures)} failed" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
