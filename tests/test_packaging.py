"""The package's extras and lock files: an application server installs the base package
alone, every imported library is declared, and the lock files hold every pin."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)")

#: Top-level modules of the extras; none may be needed to use the DAL.
NOT_IN_BASE = ("typer", "rich", "click", "boto3", "botocore", "pyinfra", "locust", "gevent",
               "matplotlib", "prometheus_client", "pgcli", "yaml", "jinja2", "cryptography")
BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed (base package only)")
sys.meta_path.insert(0, Block())
import donnadb.config, donnadb.db, donnadb.errors
import donnadb.dal.factory, donnadb.dal.postgres, donnadb.dal.files, donnadb.dal.dualwrite
from donnadb.dal.factory import create_data_access
print("ok")
"""


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> set[str]:
    project = PYPROJECT["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_name(r) for r in extra}
    return names


def _pins(requirements: list[str]) -> dict[str, str]:
    return {m.group(1).lower().replace("_", "-"): m.group(2)
            for r in requirements if (m := PIN.match(r))}


def _lock_pins(path: Path) -> dict[str, str]:
    return _pins([line for line in path.read_text().splitlines() if not line.startswith(" ")])


def test_an_application_server_needs_only_the_base_package():
    done = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=NOT_IN_BASE)],
                          capture_output=True, text=True, cwd="/", timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_base_package_lists_nothing_of_the_extras():
    base = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not base & {"typer", "rich", "boto3", "pyinfra", "locust", "matplotlib", "pgcli"}


def test_every_imported_library_is_declared():
    local = {"donnadb", "tests", "bench", "__future__"}
    dists = packages_distributions()
    declared = _declared() | {"donnadb"}
    missing = set()
    for path in [*(ROOT / "donnadb").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        siblings = {p.stem for p in path.parent.glob("*.py")}  # scripts import their neighbours
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom)
                     and node.module and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top in local | siblings or top in sys.stdlib_module_names:
                    continue
                owners = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                if not owners & declared:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_the_lock_files_hold_every_pin_of_pyproject():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    host = _lock_pins(ROOT / "requirements" / "host.lock")
    dev = _lock_pins(ROOT / "requirements" / "dev.lock")
    for name, version in _pins(project["dependencies"] + extras["ops"]).items():
        assert host.get(name) == version, f"requirements/host.lock: {name}; run `make lock`"
    for name, version in _pins([r for e in extras.values() for r in e]
                               + project["dependencies"]).items():
        assert dev.get(name) == version, f"requirements/dev.lock: {name}; run `make lock`"
    # Every pin carries hashes: pip --require-hashes installs exactly these files.
    for lock in ("host.lock", "dev.lock"):
        lines = (ROOT / "requirements" / lock).read_text().splitlines()
        for n, line in enumerate(lines):
            if "==" in line and not line.startswith(" "):
                assert lines[n + 1].lstrip().startswith("--hash=sha256:"), (lock, line)
