"""Where the router's ports lead, asked from an application host by its own user.

Copied to the app host and run with the deployed venv (tests/fleet/ha/test_cluster.py):
connects as the application role (its passfile, verify-full TLS) to the cluster's name
on the leader port and the replica port, and prints which member answered and whether
it is in recovery, as one JSON document.
"""

from __future__ import annotations

import json

import psycopg

from donnadb import db
from donnadb.config import load_settings


def probe(port: int) -> dict:
    info = db.conninfo("app", settings=load_settings())
    params = {**psycopg.conninfo.conninfo_to_dict(info), "port": port}
    with psycopg.connect(**params, prepare_threshold=None) as conn:
        in_recovery, member = conn.execute(
            "SELECT pg_is_in_recovery(), host(inet_server_addr())").fetchone()
    return {"in_recovery": in_recovery, "member": member}


if __name__ == "__main__":
    settings = load_settings()
    print(json.dumps({str(port): probe(port)
                      for port in (settings.pgbouncer_port, settings.db_read_port)}))
