"""One dual-write copy that PostgreSQL misses, made ON an application host by its own
user.

Copied to the app host and run with the deployed venv's python as the application's OS
user (tests/fleet/test_app_metrics.py), with PGBOUNCER_PORT laid over the host's
settings at a port where nothing listens and DATA_DIR at a scratch folder. The host's
settings put logs in dual-write, so the log line ``argv[1]`` (``argv[2]`` times, default
once) goes to the files, its copy to PostgreSQL fails (the first tried, the next skipped
for dual-write's retry_after) and is queued for reconcile, and the process's figures land in
MIGRATION_MIRROR_STATS_DIR. Prints one JSON document: that file's figures of logs.
"""

from __future__ import annotations

import json
import os
import sys

from donnadb.config import load_settings
from donnadb.dal.factory import create_data_access, entity_phases


def main(marker: str, count: int = 1) -> dict:
    settings = load_settings()
    dal = create_data_access(settings)
    try:
        for _ in range(count):
            dal.write_log("info", marker, {"source": "fleet"})
    finally:
        dal.close()  # writes this process's figures
    stats = settings.migration_mirror_stats_dir / f"{os.getpid()}.json"
    figures = json.loads(stats.read_text())["entities"]["logs"]
    return {"phases": entity_phases(settings), "stats_file": str(stats),
            "copies": figures["copies"], "failures": figures["failures"]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *map(int, sys.argv[2:3]))))
