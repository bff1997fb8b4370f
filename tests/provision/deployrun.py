"""Running the real deploy from tests and reading pyinfra's results table."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = ROOT / ".venv" / "bin" / "pyinfra"
COMMAND = [str(PYINFRA), "-y", "inventory/local.py", "deploy.py"]
HELPER = ROOT / "donnadb" / "provision" / "files" / "pgpasswords.py"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class DeployRun:
    returncode: int
    output: str
    ps_samples: set[str] = field(default_factory=set)

    @property
    def totals(self) -> dict[str, int]:
        """The "Grand total" row: hosts, success (= changed), error, no_change."""
        for line in ANSI.sub("", self.output).splitlines():
            if line.strip().startswith("Grand total"):
                cells = re.split(r"\s{2,}", line.strip())[1:]
                keys = ("hosts", "changed", "error", "no_change")
                return {k: 0 if v == "-" else int(v) for k, v in zip(keys, cells, strict=True)}
        raise AssertionError(f"no results table in pyinfra output:\n{self.output[-3000:]}")

    def changed_operations(self) -> list[str]:
        """Names of the operations the results table shows as changed (Success column)."""
        rows = []
        in_table = False
        for line in ANSI.sub("", self.output).splitlines():
            if "--> Results:" in line:
                in_table = True
                continue
            if not in_table or "|" not in line:
                continue
            cells = re.split(r"\s{2,}", line.strip())
            if len(cells) >= 5 and cells[2] != "-":
                rows.append(cells[0])
        return rows


def run_deploy(*, sample_ps: bool = False, timeout: float = 300, deploy_file: str | None = None,
               data: dict[str, object] | None = None, env: dict[str, str] | None = None,
               inventory: str | None = None) -> DeployRun:
    """Run `pyinfra -y inventory/local.py deploy.py` from the repository root.

    ``inventory`` replaces inventory/local.py, ``deploy_file`` replaces deploy.py,
    ``data`` overrides group_data (``--data``).
    With ``sample_ps``, every process's argv is sampled (``ps -eo args``) while it runs.
    """
    command = list(COMMAND)
    if inventory:
        command[2] = inventory
    if deploy_file:
        command[-1] = deploy_file
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={value}"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    samples: set[str] = set()
    if sample_ps:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                                check=False)
            samples.update(ps.stdout.splitlines())
            time.sleep(0.01)  # leave the 2 cores to the deploy
    output, _ = proc.communicate(timeout=timeout)
    return DeployRun(proc.returncode, output, samples)


def load_helper():
    """The uploaded password helper, imported as a module (it is a standalone script)."""
    spec = importlib.util.spec_from_file_location("pgpasswords", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_group_data() -> dict:
    """group_data/all.py's settings, as pyinfra sees them."""
    import runpy

    return runpy.run_path(str(ROOT / "group_data" / "all.py"))


def deploy_twice(*, inventory: str, env: dict[str, str], hosts: list[str], log_dir: Path,
                 log_name: str, timeout: float) -> tuple[DeployRun, DeployRun]:
    """``inventory`` deployed twice (the second run must change nothing: the tests say),
    each run's output kept as ``log_dir/<log_name>-N.log`` for the reader of a failure.

    Both runs must succeed and reach every one of ``hosts`` (pyinfra carries on without
    a host it cannot reach).
    """
    runs = []
    for n in (1, 2):
        run = run_deploy(inventory=inventory, env=env, timeout=timeout)
        if n == 1 and not _all_connected(run, hosts):
            # A freshly booted host's sshd may greet before it lets anyone log in; the
            # deploy is idempotent, so the run is repeated once for the late host.
            (log_dir / f"{log_name}-{n}-unreached.log").write_text(run.output)
            run = run_deploy(inventory=inventory, env=env, timeout=timeout)
        (log_dir / f"{log_name}-{n}.log").write_text(run.output)
        assert run.returncode == 0, run.output[-6000:]
        assert _all_connected(run, hosts), run.output[:3000]
        runs.append(run)
    return runs[0], runs[1]


def _all_connected(run: DeployRun, hosts: list[str]) -> bool:
    # pyinfra pads the names to one width.
    return all(re.search(rf"\[{re.escape(name)}\]\s+Connected", run.output) for name in hosts)
