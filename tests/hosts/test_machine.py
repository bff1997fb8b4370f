"""The test-host tools' own logic (nothing is booted here; CI boots a host for real)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts import machine
from tests.hosts.readme import readme_commands

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_run_is_the_readme_as_written():
    commands = readme_commands(ROOT / "README.md")
    # The two commands, then the look at the result the README suggests next.
    assert commands[-4:] == ["make deploy", "make test", "donnactl db check --security",
                             "donnactl status"]
    assert any("apt-get install" in c and "git" in c and "make" in c for c in commands[:-2])


def test_a_readme_without_the_section_is_an_error(tmp_path):
    (tmp_path / "README.md").write_text("# x\n\n## Other\n\n```sh\nmake\n```\n")
    with pytest.raises(machine.HostError, match="no '## Two commands' section"):
        readme_commands(tmp_path / "README.md")


def test_the_base_is_named_by_its_recipe(tmp_path):
    carried = tmp_path / "ca.crt"
    carried.write_text("one")
    first = machine.recipe_key("http://mirror", [carried])
    assert machine.recipe_key("http://mirror", [carried]) == first
    assert machine.recipe_key("http://other", [carried]) != first
    carried.write_text("two")
    assert machine.recipe_key("http://mirror", [carried]) != first


def test_only_trees_under_the_state_directory_are_ever_deleted(tmp_path):
    victim = tmp_path / "keep"
    victim.mkdir()
    with pytest.raises(machine.HostError, match="refusing to delete"):
        machine._remove_tree(victim)
    assert victim.is_dir()


#: A stand-in for a host's systemd-nspawn: starts an "init" child and waits; SIGTERM
#: halts the init, then itself, as nspawn does; "stuck" ignores SIGTERM (a hung host).
FAKE_NSPAWN = """
import signal, subprocess, sys, time
init = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
def halt(*_):
    init.terminate(); init.wait(); sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[1] == "stuck" else halt)
print(init.pid, flush=True)
time.sleep(120)
"""


def _left_running(tmp_path: Path, root: Path, mode: str) -> tuple[subprocess.Popen, int]:
    """A host of ``root`` as a killed run leaves it: (its systemd-nspawn, its init's PID)."""
    nspawn = tmp_path / "systemd-nspawn"
    if not nspawn.exists():
        nspawn.symlink_to(Path(sys.executable).resolve())
    proc = subprocess.Popen([str(nspawn), "-c", FAKE_NSPAWN, mode, "-q", "-D", str(root),
                             "-b"], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


@pytest.mark.parametrize("mode", ["halts", "stuck"])
def test_a_host_left_running_by_a_killed_run_is_stopped_before_its_next_boot(tmp_path, mode):
    root, other = tmp_path / "hosts" / "db1", tmp_path / "hosts" / "db2"
    stale, init = _left_running(tmp_path, root, mode)
    bystander, bystander_init = _left_running(tmp_path, other, "halts")
    try:
        log = io.StringIO()
        assert machine.stop_stale(root, timeout=1, log=log) == [stale.pid]
        assert stale.wait(5) is not None and not machine._alive(init)
        assert "db1 is still running from an earlier run" in log.getvalue()
        assert bystander.poll() is None  # another host's is not touched
        assert machine.stop_stale(root, timeout=1, log=log) == []
    finally:
        for pid in (init, bystander_init):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in (stale, bystander):
            proc.kill()
            proc.wait()


class ScriptedHost(machine.Host):
    """A host whose commands answer from a script: what start_unit does with systemd's
    answers, without booting one."""

    def __init__(self, answers: dict[str, list[tuple[int, str]]]):
        super().__init__("h1", "127.0.0.11", Path("/nonexistent"))
        self.answers = answers
        self.ran: list[str] = []

    def run(self, script, **_):
        self.ran.append(script)
        key = script.split()[1]
        code, out = self.answers[key].pop(0) if len(self.answers[key]) > 1 \
            else self.answers[key][0]
        return subprocess.CompletedProcess(script, code, out, "")


def test_a_unit_that_could_not_join_its_cgroup_is_started_again(monkeypatch):
    monkeypatch.setattr(machine.time, "sleep", lambda _: None)
    host = ScriptedHost({"start": [(1, ""), (0, "")], "show": [(0, "219\n")]})
    assert host.start_unit("donna-x.service").returncode == 0
    assert host.ran.count("systemctl start donna-x.service") == 2


def test_a_unit_that_fails_on_its_own_is_not_started_again():
    host = ScriptedHost({"start": [(1, "")], "show": [(0, "1\n")],
                         "-u": [(0, "donna-x.service: failed\n")]})
    with pytest.raises(machine.HostError, match="donna-x.service failed to start"):
        host.start_unit("donna-x.service")
    assert host.ran.count("systemctl start donna-x.service") == 1


def test_a_unit_that_keeps_failing_its_cgroup_is_an_error_after_the_retries(monkeypatch):
    monkeypatch.setattr(machine.time, "sleep", lambda _: None)
    host = ScriptedHost({"start": [(1, "")], "show": [(0, "219\n")],
                         "-u": [(0, "")]})
    with pytest.raises(machine.HostError):
        host.start_unit("donna-x.service")
    assert host.ran.count("systemctl start donna-x.service") == machine.CGROUP_RETRIES
