"""One login attempt from an application host, with libpq parameters overridden.

Run on the app host by its own user (tests/fleet/test_tls.py): ``argv[1]`` is a JSON
object of connection parameters laid over what the DAL would use (donnadb.db.conninfo
for the application role, through PgBouncer); prints ``{"ok": ..., "error": ...}``.
"""

from __future__ import annotations

import json
import sys

import psycopg

from donnadb import db
from donnadb.config import load_settings


def attempt(overrides: dict) -> dict:
    info = db.conninfo("app", settings=load_settings())
    params = {**psycopg.conninfo.conninfo_to_dict(info), **overrides}
    try:
        with psycopg.connect(**params, prepare_threshold=None) as conn:
            conn.execute("SELECT 1").fetchone()
            return {"ok": True, "error": None, "ssl": bool(conn.pgconn.ssl_in_use)}
    except psycopg.Error as exc:
        return {"ok": False, "error": " ".join(str(exc).split())}


if __name__ == "__main__":
    print(json.dumps(attempt(json.loads(sys.argv[1]))))
