"""The dependency locks: resolve them from pyproject.toml, or check that they still agree with it.

    python scripts/lock.py compile [--upgrade]   # after editing pyproject.toml's dependencies (make lock)
    python scripts/lock.py check                 # every install runs this (make setup, CI)

``requirements.lock`` pins every runtime dependency, direct and transitive, with hashes, for
Linux, macOS and Windows on Python 3.10-3.12 (one version of each package everywhere), and the
build backend, so the editable install fetches nothing either: the Docker image and the cluster
nodes install it. ``requirements-dev.lock`` adds the test tools,
resolved against the runtime lock so the shared packages keep the same pins: the Makefile and
CI install it. ``compile`` keeps every pin that still satisfies pyproject.toml (uv reads the old
lock as its preferences), so only what the edit needs moves; ``--upgrade`` moves everything to
the newest releases allowed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
LOCKS = {"requirements.lock": [], "requirements-dev.lock": ["dev"]}  # lock -> extras it includes
PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)
DIRECT = "# via musicray (pyproject.toml)"


def compile_locks(upgrade: bool) -> None:
    common = ["--universal", "--python-version", "3.10", "--fork-strategy", "fewest", "--generate-hashes",
              "--quiet", *(["--upgrade"] if upgrade else [])]
    runtime, dev = LOCKS
    build_backend = "\n".join(build_requirements()) + "\n"  # read from stdin ("-")
    subprocess.run(["uv", "pip", "compile", "pyproject.toml", "-", *common, "-o", runtime], cwd=REPO, check=True,
                   input=build_backend, text=True)
    subprocess.run(["uv", "pip", "compile", "pyproject.toml", "-", "--extra", "dev", "-c", runtime, *common,
                    "-o", dev], cwd=REPO, check=True, input=build_backend, text=True)


def build_requirements() -> list[str]:
    return tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]


def requirements(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = list(project["dependencies"]) + build_requirements()
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def pins(lock: Path) -> dict[str, set[Version]]:
    """Package -> the versions the lock pins (one, or one per marker branch)."""
    found: dict[str, set[Version]] = {}
    for name, version in PINNED.findall(lock.read_text()):
        found.setdefault(canonicalize_name(name), set()).add(Version(version))
    return found


def direct_names(lock: Path) -> set[str]:
    """The packages the lock says pyproject.toml asked for by name (uv's ``# via`` notes)."""
    names, current = set(), None
    for line in lock.read_text().splitlines():
        match = PINNED.match(line)
        if match:
            current = canonicalize_name(match.group(1))
        elif current and line.strip() in (DIRECT, "#   musicray (pyproject.toml)"):
            names.add(current)
    return names


def problems() -> list[str]:
    found = []
    for lock_name, extras in LOCKS.items():
        lock = REPO / lock_name
        if not lock.exists():
            found.append(f"{lock_name} is missing: run `make lock`")
            continue
        locked, wanted = pins(lock), requirements(extras)
        for requirement in wanted:
            versions = locked.get(canonicalize_name(requirement.name))
            if not versions:
                found.append(f"{lock_name} does not pin {requirement.name}, which pyproject.toml requires")
            elif bad := [str(v) for v in versions if not requirement.specifier.contains(v, prereleases=True)]:
                found.append(f"{lock_name} pins {requirement.name}=={', '.join(bad)}, outside pyproject.toml's "
                             f"{requirement}")
        stale = direct_names(lock) - {canonicalize_name(r.name) for r in wanted}
        if stale:
            found.append(f"{lock_name} was resolved for {', '.join(sorted(stale))}, which pyproject.toml no longer "
                         f"requires")
    if not found:  # the dev lock must not move a runtime pin
        runtime, dev = (pins(REPO / name) for name in LOCKS)
        for name in sorted(runtime.keys() & dev.keys()):
            if runtime[name] != dev[name]:
                found.append(f"requirements-dev.lock pins {name} {sorted(map(str, dev[name]))}, "
                             f"requirements.lock {sorted(map(str, runtime[name]))}")
    return found


def main(argv: list[str]) -> int:
    if argv[:1] == ["compile"]:
        compile_locks(upgrade="--upgrade" in argv)
        argv = ["check"]
    if argv != ["check"]:
        print("usage: python scripts/lock.py compile [--upgrade] | check", file=sys.stderr)
        return 2
    found = problems()
    for problem in found:
        print(f"lock check: {problem}", file=sys.stderr)
    if found:
        print("lock check: pyproject.toml and the locks disagree; run `make lock` and commit both locks",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
