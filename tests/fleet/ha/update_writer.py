"""The application's writes through the router while the members are updated.

Copied to the application host and run by its own user with the deployed venv
(tests/fleet/ha/test_update.py): inserts one user row at a time through the router's
leader port (PGBOUNCER_PORT) until the stop file appears, reconnecting after an error;
then reads back which acknowledged rows exist. Prints one JSON document.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psycopg

from donnadb import db
from donnadb.config import load_settings

INSERT = "INSERT INTO users (clerk_id, email, name) VALUES (%s, %s, 'minor update')"


def main(marker: str, stop_file: str, max_seconds: float) -> dict:
    info = db.conninfo("app", settings=load_settings(), connect_timeout=3)
    acked: list[str] = []
    failed, ok_since_failure, attempt, conn = 0, 0, 0, None
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline and not Path(stop_file).exists():
        attempt += 1
        key = f"{marker}_{attempt}"
        try:
            if conn is None:
                conn = psycopg.connect(info, autocommit=True, prepare_threshold=None)
            conn.execute(INSERT, (key, f"{key}@example.org"))
            acked.append(key)
            ok_since_failure += 1
        except psycopg.Error:
            failed, ok_since_failure = failed + 1, 0
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.2)
        time.sleep(0.05)
    with psycopg.connect(info, prepare_threshold=None) as check:
        found = {r[0] for r in check.execute(
            "SELECT clerk_id FROM users WHERE clerk_id LIKE %s", (f"{marker}\\_%",))}
    return {"attempts": attempt, "acknowledged": len(acked), "failed": failed,
            "lost": sorted(set(acked) - found), "ok_since_last_failure": ok_since_failure}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
