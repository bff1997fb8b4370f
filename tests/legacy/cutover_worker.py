"""One application process of the cut-over load test (tests/legacy/test_cutover_under_load.py).

Run as ``python -m tests.legacy.cutover_worker CONTROL OUT WORKER SEED``. It loops over
DAL calls through ``create_data_access()``, on the legacy users and chats every worker
shares and on its own, and appends one JSON line per acknowledged write, failed call and
store switch to OUT. CONTROL (JSON, written by the test) holds the settings of the
current step; when its ``step`` grows the worker re-creates its store with them after a
random short delay of its own, as one process of a rolling restart does, so old and new
phases serve side by side for a while. It stops when CONTROL says ``stop`` or at its
``deadline`` (a wall-clock time), whichever comes first.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from donnadb.config import load_settings
from donnadb.dal import create_data_access

#: Seconds a worker waits, at most, before taking a new step (its moment of the restart).
RESTART_SPREAD = 1.5
#: Seconds between two calls of a worker: a steady load, not a benchmark.
PACE = 0.005


def read_control(path: Path) -> dict[str, Any]:
    """The control file; the previous one while the test is replacing it."""
    return json.loads(path.read_text())


class Worker:
    def __init__(self, control: Path, out: Path, worker: int, seed: int) -> None:
        self.control_path, self.worker = control, worker
        self.rng = random.Random(seed)  # noqa: S311 - test load, not secrets
        self.seed = seed
        self.out = out.open("a", buffering=1)
        self.control = read_control(control)
        self.step = -1
        self.switch_at: float | None = None
        self.dal: Any = None
        self.shared_users: list[str] = self.control["users"]
        self.shared_chats: list[str] = self.control["chats"]
        self.own_users: list[str] = []
        self.own_chats: list[str] = []
        self.n = 0

    def record(self, **fields: Any) -> None:
        self.out.write(json.dumps({"w": self.worker, "t": time.time(), **fields}) + "\n")

    # ------------------------------------------------------------------ the restart
    def poll(self) -> bool:
        """Follow the control file; False once the worker should stop."""
        with contextlib.suppress(OSError, ValueError):  # being replaced: keep the last one
            self.control = read_control(self.control_path)
        if self.control.get("stop") or time.time() > self.control["deadline"]:
            return False
        if self.control["step"] > self.step and self.switch_at is None:
            delay = 0.0 if self.dal is None else self.rng.uniform(0.0, RESTART_SPREAD)
            self.switch_at = time.monotonic() + delay
        if self.switch_at is not None and time.monotonic() >= self.switch_at:
            self.restart()
        return True

    def restart(self) -> None:
        step = self.control["step"]
        if self.dal is not None:
            self.dal.close()
        settings = load_settings(**self.control["settings"])
        if self.control.get("direct"):
            # Straight to PostgreSQL: PgBouncer's login back-off (server_login_retry)
            # after another test's failed logins would stall every worker at once.
            settings = settings.model_copy(update={"pgbouncer_port": None})
        self.dal = create_data_access(settings, dbname=self.control["dbname"])
        self.step, self.switch_at = step, None
        self.record(kind="switch", step=step, store=self.dal.store)

    # ------------------------------------------------------------------ the calls
    def user_id(self, clerk: str) -> str:
        """The store's id of a Clerk id: the app knows its users by Clerk id, and a
        store's own ids may differ (docs/dal.md)."""
        user = self.dal.get_user_by_clerk_id(clerk)
        if user is None:
            raise LookupError(f"user {clerk} not found")
        return user["id"]

    def pick_user(self) -> str:
        pool = self.own_users if self.own_users and self.rng.random() < 0.3 else \
            self.shared_users
        return self.rng.choice(pool)

    def pick_chat(self) -> str:
        pool = self.own_chats if self.own_chats and self.rng.random() < 0.3 else \
            self.shared_chats
        return self.rng.choice(pool)

    def call(self) -> None:
        self.n += 1
        # The seed too: workers started again after a stop make new names.
        tag = f"lw{self.worker}s{self.seed}n{self.n}"
        op = self.rng.choices(
            ("create_user", "set_memory", "get_memory", "create_chat", "add_message",
             "history", "write_log"), weights=(1, 4, 3, 1, 6, 4, 2))[0]
        try:
            self._call(op, tag)
        except Exception as exc:  # every failure is what the test counts
            self.record(kind="failed", op=op, error=f"{type(exc).__name__}: {exc}",
                        trace=traceback.format_exc()[-1500:])
        else:
            self.record(kind="ok", op=op)

    def _call(self, op: str, tag: str) -> None:
        dal = self.dal
        if op == "create_user":
            clerk = f"user_{tag}"
            dal.create_user({"clerk_id": clerk, "email": f"{tag}@example.org", "name": tag})
            self.own_users.append(clerk)
            self.record(kind="ack", entity="users", clerk=clerk)
        elif op == "set_memory":
            clerk = self.pick_user()
            dal.set_user_memory(self.user_id(clerk), "context", tag, {"by": tag})
            self.record(kind="ack", entity="memory", clerk=clerk, key=tag)
        elif op == "get_memory":
            dal.get_user_memory(self.user_id(self.pick_user()), "context")
        elif op == "create_chat":
            chat = f"c_{tag}"
            dal.create_chat_session(chat, self.user_id(self.pick_user()), {"by": tag},
                                    title=tag)
            self.own_chats.append(chat)
            self.record(kind="ack", entity="chats", chat=chat)
        elif op == "add_message":
            chat = self.pick_chat()
            message_id = dal.add_message(chat, "user", f"load message {tag}")
            self.record(kind="ack", entity="messages", chat=chat, id=message_id,
                        content=f"load message {tag}")
        elif op == "history":
            dal.get_chat_history(self.pick_chat(), limit=10)
        else:
            dal.write_log("info", f"load log {tag}", {"by": tag})
            self.record(kind="ack", entity="logs", message=f"load log {tag}")

    def run(self) -> None:
        try:
            while self.poll():
                self.call()
                time.sleep(PACE)
        finally:
            if self.dal is not None:
                self.dal.close()
            self.record(kind="done", calls=self.n)
            self.out.close()


def main(argv: list[str]) -> int:
    control, out, worker, seed = argv
    Worker(Path(control), Path(out), int(worker), int(seed)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
