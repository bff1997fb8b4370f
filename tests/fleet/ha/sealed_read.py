"""A user's sealed fields and memory read back on an application host by its own user.

Copied to the app host and run with the deployed venv (tests/fleet/ha/test_cluster.py):
a fresh DAL process (no data key held yet) reads the user ``argv[1]`` through the
router, from the leader or (``DB_READ_FROM=replicas``) a replica, and prints the opened
e-mail, name and memory as one JSON document.
"""

from __future__ import annotations

import json
import sys

from donnadb.config import load_settings
from donnadb.dal.postgres import PostgresDataAccess

if __name__ == "__main__":
    dal = PostgresDataAccess(load_settings(data_storage_type="postgresql"))
    try:
        user = dal.get_user_by_id(sys.argv[1])
        print(json.dumps({"email": user["email"], "name": user["name"],
                          "memory": dal.get_user_memory(sys.argv[1], "preferences")}))
    finally:
        dal.close()
