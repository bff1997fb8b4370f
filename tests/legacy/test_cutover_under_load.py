"""The per-entity cut-over of docs/runbook.md, run under load: several application
processes call the DAL continuously while every step of the runbook is taken (a
rolling restart into the step's settings, then the step's `donnactl migrate-data`
commands), from the files alone to PostgreSQL alone. No call may fail, no
acknowledged write may be missing from PostgreSQL at the end, and each process's
longest gap between two answered calls is measured (the downtime of a switch). Real
PostgreSQL, real processes, the real CLI.

Without the per-entity store keeping the legacy files of what PostgreSQL alone holds,
the moves of users and memory, and of messages, to PostgreSQL lose writes here: a
process still in dual-write copies its stale memory file over PostgreSQL, or numbers a
message from a chat file that misses the messages written to PostgreSQL alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from donnadb import db
from donnadb.legacy.fixtures import generate
from tests.legacy.conftest import DONNACTL

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
#: Seconds each step keeps the load on its settings once every worker has taken them.
HOLD = 1.0
#: The runbook's steps: (name, DATA_STORAGE_<ENTITY> values, MIGRATION_PRIMARY_STORE,
#: the commands of the step, run once every worker has restarted into it, and whether
#: every process must stop before any starts with the new settings (a stop-start)
#: rather than restart one by one).
STEPS: list[tuple[str, dict[str, str], str, list[list[str]], bool]] = [
    ("files", dict.fromkeys(("users", "memory", "chats", "messages", "logs"), "file"),
     "file", [["import"]]),
    ("pilot: memory dual", {"memory": "dual"}, "file",
     [["import", "--entity", "memory"], ["reconcile", "--entity", "memory"],
      ["verify", "--entity", "memory"]]),
    ("users dual", {"users": "dual"}, "file",
     [["import", "--entity", "users"], ["reconcile", "--entity", "users"],
      ["verify", "--entity", "users"]]),
    ("chats and messages dual", {"chats": "dual", "messages": "dual"}, "file",
     [["import", "--entity", "messages"], ["reconcile", "--entity", "chats"],
      ["reconcile", "--entity", "messages"], ["verify", "--entity", "chats"],
      ["verify", "--entity", "messages"]]),
    ("logs dual", {"logs": "dual"}, "file",
     [["import", "--entity", "logs"], ["reconcile", "--entity", "logs"],
      ["verify", "--entity", "logs"]]),
    ("reads from postgresql", {}, "postgresql", [["verify"]]),
    ("chats postgresql", {"chats": "postgresql"}, "postgresql", []),
    ("users and memory postgresql", {"users": "postgresql", "memory": "postgresql"},
     "postgresql", []),
    ("messages postgresql", {"messages": "postgresql"}, "postgresql", []),
    ("logs postgresql", {"logs": "postgresql"}, "postgresql", []),
]
#: Runs of a `verify` taken under load (see Cutover.verify).
VERIFY_TRIES = 4


def phases_after(step: int, steps=STEPS) -> tuple[dict[str, str], str]:
    phases: dict[str, str] = {}
    primary = "file"
    for _, changes, primary_now, _ in steps[:step + 1]:
        phases.update(changes)
        primary = primary_now
    return phases, primary


class Cutover:
    """The test's side of the load: the control file, the workers, the commands."""

    def __init__(self, tmp: Path, dbname: str, data: Path, steps=STEPS) -> None:
        self.tmp, self.dbname, self.data, self.steps = tmp, dbname, data, steps
        self.control = tmp / "control.json"
        self.procs: list[subprocess.Popen] = []
        self.outs = [tmp / f"worker-{i}.jsonl" for i in range(WORKERS)]
        self.switched_at: dict[int, float] = {}
        self.commands: list[tuple[str, int, float]] = []
        self.shared = {"users": sorted(p.stem for p in (data / "memory").glob("*.json")),
                       "chats": sorted(p.stem for p in (data / "chat_sessions").glob("*.json"))}
        self.step = -1

    def env(self) -> dict[str, str]:
        phases, primary = phases_after(self.step, self.steps)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DB_NAME": self.dbname,
               "DATA_DIR": str(self.data), "DATA_STORAGE_TYPE": "file",
               "MIGRATION_ENABLE_DUAL_WRITE": "false", "MIGRATION_PRIMARY_STORE": primary,
               "OPS_LOG_FILE": str(self.tmp / "donnactl.jsonl"), "COLUMNS": "200"}
        env.update({f"DATA_STORAGE_{e.upper()}": p for e, p in phases.items()})
        return env

    def write_control(self, **extra: Any) -> None:
        phases, primary = phases_after(self.step, self.steps)
        settings = {"data_dir": str(self.data), "db_name": self.dbname,
                    "data_storage_type": "file", "migration_enable_dual_write": False,
                    "migration_primary_store": primary,
                    **{f"data_storage_{e}": p for e, p in phases.items()}}
        doc = {"step": self.step, "settings": settings, "dbname": self.dbname, "direct": True,
               "deadline": time.time() + 300, **self.shared, **extra}
        part = self.control.with_suffix(".part")
        part.write_text(json.dumps(doc))
        part.replace(self.control)

    def start(self, seed: int = 1000) -> None:
        """Start the workers into the next step (after a stop too: a stop-start; each
        start needs its own ``seed``, which the workers' writes are named by)."""
        self.next_step()
        self.procs = []
        for i, out in enumerate(self.outs):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.legacy.cutover_worker", str(self.control),
                 str(out), str(i), str(seed + i)],
                cwd=ROOT, env=self.env(), stderr=(self.tmp / f"worker-{i}.err").open("w")))
        self.wait_switched()

    def next_step(self) -> None:
        self.step += 1
        self.switched_at[self.step] = time.time()
        self.write_control()

    def records(self) -> list[dict[str, Any]]:
        found = []
        for out in self.outs:
            if out.exists():
                found += [json.loads(line) for line in out.read_text().splitlines()
                          if line.endswith("}")]
        return found

    def wait_switched(self) -> None:
        """Until every worker serves with this step's settings (the restart is over)."""
        self.wait_for("switch", self.step)

    def wait_for(self, kind: str, step: int, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            done = {r["w"] for r in self.records() if r["kind"] == kind and r["step"] == step}
            if len(done) == WORKERS:
                return
            assert all(p.poll() is None for p in self.procs), "a worker died: see worker-*.err"
            time.sleep(0.1)
        pytest.fail(f"step {step}: not every worker {kind} within {timeout}s")

    def donnactl(self, args: list[str]) -> subprocess.CompletedProcess:
        command = ["migrate-data", *args]
        if args[0] == "import":
            command += ["--report-dir", str(self.tmp / "reports")]
        done = subprocess.run([DONNACTL, *command], capture_output=True, text=True,
                              env=self.env(), cwd=self.tmp, timeout=120)
        self.commands.append((" ".join(args), done.returncode, time.time()))
        return done

    def verify(self, args: list[str]) -> list[dict[str, str]]:
        """The differences `verify` finds again and again, unchanged, over VERIFY_TRIES
        runs: under load a write landing between its reading of the files and of the
        database is a difference of that moment, and changes or goes by the next run."""
        lasting: list[dict[str, str]] | None = None
        for _ in range(VERIFY_TRIES):
            done = self.donnactl([*args, "--json"])
            assert done.returncode in (0, 1) and done.stdout, done.stderr[-2000:]
            found = json.loads(done.stdout)["differences"]
            lasting = found if lasting is None else [d for d in found if d in lasting]
            if not lasting:
                break
            time.sleep(0.3)
        return lasting or []

    def stop(self) -> None:
        self.write_control(stop=True)
        for proc in self.procs:
            proc.wait(timeout=60)


@pytest.fixture
def legacy_data(tmp_path) -> Path:
    data = tmp_path / "data"
    generate(data, users=30, chats=40, messages_per_chat=6, logs=30, deviations=False)
    return data


def stored(settings, dbname: str) -> dict[str, set]:
    """What PostgreSQL holds, keyed as the workers record their writes."""
    with db.connection("migrator", settings=settings, dbname=dbname) as conn:
        return {
            "users": {r[0] for r in conn.execute("SELECT clerk_id FROM users")},
            "memory": {tuple(r) for r in conn.execute(
                "SELECT u.clerk_id, m.key FROM user_memory m JOIN users u ON u.id = m.user_id "
                "WHERE m.memory_type = 'context'")},
            "chats": {r[0] for r in conn.execute("SELECT chat_id FROM chat_sessions")},
            "messages": {(r[0], str(r[1]), r[2]) for r in conn.execute(
                "SELECT s.chat_id, m.id, m.content FROM messages m "
                "JOIN chat_sessions s ON s.id = m.chat_session_id")},
            "logs": {r[0] for r in conn.execute("SELECT message FROM system_logs")},
        }


def ack_key(ack: dict[str, Any]) -> tuple[str, Any]:
    entity = ack["entity"]
    key = {"users": lambda a: a["clerk"], "memory": lambda a: (a["clerk"], a["key"]),
           "chats": lambda a: a["chat"], "messages": lambda a: (a["chat"], a["id"], a["content"]),
           "logs": lambda a: a["message"]}[entity](ack)
    return entity, key


def gaps(records: list[dict[str, Any]], switched_at: dict[int, float]
         ) -> tuple[dict[int, float], dict[int, float]]:
    """Per worker the longest time between two answered calls, and per step the longest
    such gap that overlaps the step's rolling restart (from the step's start until every
    worker took it), in seconds."""
    per_worker: dict[int, float] = {}
    per_step: dict[int, float] = dict.fromkeys(switched_at, 0.0)
    ends = {s: max(r["t"] for r in records if r["kind"] == "switch" and r["step"] == s)
            for s in switched_at}
    for w in range(WORKERS):
        times = sorted(r["t"] for r in records if r["w"] == w and r["kind"] == "ok")
        pairs = list(zip(times, times[1:], strict=False))
        per_worker[w] = max((b - a for a, b in pairs), default=0.0)
        for step, start in switched_at.items():
            spans = [b - a for a, b in pairs if b >= start and a <= ends[step]]
            per_step[step] = max(per_step[step], *spans, 0.0)
    return per_worker, per_step


def test_every_step_of_the_cutover_under_load(settings, scratch_db, legacy_data, tmp_path):
    cut = Cutover(tmp_path, scratch_db, legacy_data)
    failed_commands = []
    try:
        cut.start()
        for step, (name, _, _, commands) in enumerate(STEPS):
            if step:
                cut.next_step()
                cut.wait_switched()
            for args in commands:
                if args[0] == "verify":
                    lasting = cut.verify(args)
                    if lasting:
                        failed_commands.append(f"{name}: {' '.join(args)}: {lasting[:5]}")
                    continue
                done = cut.donnactl(args)
                if done.returncode != 0:
                    failed_commands.append(f"{name}: {' '.join(args)} exited "
                                           f"{done.returncode}: {done.stdout[-1500:]}"
                                           f"{done.stderr[-1500:]}")
            time.sleep(HOLD)
    finally:
        cut.stop()
    records = cut.records()
    failures = [r for r in records if r["kind"] == "failed"]
    answered = sum(r["kind"] == "ok" for r in records)
    per_worker, per_step = gaps(records, cut.switched_at)
    report = {
        "calls answered": answered, "calls failed": len(failures),
        "longest gap per worker (s)": {w: round(g, 3) for w, g in per_worker.items()},
        "longest gap across each switch (s)": {STEPS[s][0]: round(g, 3)
                                              for s, g in per_step.items()},
        "each switch, from its start until every worker took it (s)": {
            STEPS[s][0]: round(max(r["t"] for r in records
                                   if r["kind"] == "switch" and r["step"] == s) - start, 3)
            for s, start in cut.switched_at.items()},
        "commands": [(c, rc) for c, rc, _ in cut.commands],
    }
    print(json.dumps(report, indent=1))
    (tmp_path / "report.json").write_text(json.dumps(report, indent=1))

    assert not failures, (f"{len(failures)} of {answered + len(failures)} calls failed, "
                          f"e.g. {failures[:3]}")
    assert not failed_commands, "\n".join(failed_commands)
    held = stored(settings, scratch_db)
    missing = [ack for ack in (r for r in records if r["kind"] == "ack")
               if ack_key(ack)[1] not in held[ack["entity"]]]
    acked = sum(r["kind"] == "ack" for r in records)
    assert not missing, f"{len(missing)} of {acked} acknowledged writes lost: {missing[:5]}"
    assert acked > 200 * WORKERS // 4, f"too little load to prove anything: {acked} writes"
