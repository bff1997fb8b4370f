"""The shipped code: a root-owned venv from a wheel; a tree others can write is refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from donnadb.provision import install
from tests.provision.deployrun import PYINFRA, ROOT

SHIPPED = ("donnadb", "schema", "backups", "requirements", "group_data", "inventory",
           "pyproject.toml", "deploy.py")


@pytest.fixture
def tree(tmp_path):
    """A copy of the deployable tree in a directory only root can write."""
    tmp_path.chmod(0o755)
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in SHIPPED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, copy / name)
    return copy


def test_a_clean_tree_passes(tree):
    assert install.source_tree_problem(tree) is None


@pytest.mark.parametrize("plant", ["group_writable_module", "world_writable_dir",
                                   "foreign_owner", "symlink_to_elsewhere",
                                   "writable_parent"])
def test_a_tree_others_could_change_is_refused(tree, plant):
    target = tree / "donnadb" / "provision" / "steps.py"
    if plant == "group_writable_module":
        target.chmod(0o664)
    elif plant == "world_writable_dir":
        (tree / "schema" / "migrations").chmod(0o777)
    elif plant == "foreign_owner":
        os.chown(target, 65534, 65534)
    elif plant == "symlink_to_elsewhere":
        (tree / "donnadb" / "extra.py").symlink_to("/tmp/anything.py")  # noqa: S108
    else:
        tree.parent.chmod(0o777)  # not sticky: anyone could rename the checkout away
    assert install.source_tree_problem(tree) is not None


def test_a_sticky_parent_like_tmp_is_fine(tree):
    tree.parent.chmod(0o1777)
    assert install.source_tree_problem(tree) is None


def test_the_deploy_refuses_a_writable_checkout_before_changing_anything(tree):
    (tree / "donnadb" / "db.py").chmod(0o666)
    # The copy's own package first on sys.path: its deploy is the one that runs.
    done = subprocess.run([str(PYINFRA), "-y", "--dry", "inventory/local.py", "deploy.py"],
                          cwd=tree, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(tree)})
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    assert "refusing to ship code that others could have changed" in out, out[-3000:]
    assert "db.py" in out


def test_the_wheel_is_reproducible():
    first = install.build_wheel.__wrapped__(ROOT)
    second = install.build_wheel.__wrapped__(ROOT)
    assert hashlib.sha256(first.read_bytes()).digest() == \
        hashlib.sha256(second.read_bytes()).digest()


@pytest.mark.deploy
def test_the_installed_code_is_root_owned_and_not_writable_by_others(deployed):
    base = Path("/opt/donnadb")
    assert (base / "venv" / "bin" / "donnactl").is_file()
    assert Path(install.PATH_LINK).resolve() == (base / "venv" / "bin" / "donnactl").resolve()
    for dirpath, _dirs, filenames in os.walk(base):
        for entry in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            st = os.lstat(entry)
            if stat.S_ISLNK(st.st_mode):
                continue
            assert st.st_uid == 0, entry
            assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), entry
    shipped = sorted(p.name for p in (base / "schema" / "migrations").glob("*.sql"))
    assert shipped == sorted(p.name for p in (ROOT / "schema" / "migrations").glob("*.sql"))


@pytest.mark.deploy
def test_donnactl_on_path_runs_the_installed_code_with_its_migrations(deployed):
    done = subprocess.run([install.PATH_LINK, "migrate", "status", "--json"], cwd="/",
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "OPS_LOG_FILE": "/dev/null"})
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["pending"] == [] and status["applied"], status
