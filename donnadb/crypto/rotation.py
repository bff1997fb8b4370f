"""`donnactl keys`: which KEKs the data keys use, and re-wrapping them under a new one.

Rotating a KEK (docs/security.md, "Rotating the key encryption key"):

1. ``keys add-kek`` puts a new KEK on top of the key file (the old ones stay);
2. the application is restarted (or meets a key it does not know: it reads the key file
   again), so every process can unwrap keys wrapped by the new KEK;
3. ``keys rotate`` re-wraps every data key not under the current KEK, a batch per
   transaction (rows locked ``SKIP LOCKED``, so two runs share the work); killed, it is
   run again and goes on where it stopped. The data keys themselves do not change, so
   no sealed value is rewritten, and reads go on throughout;
4. ``keys status`` shows no data key left under the old KEK; ``keys retire KEK_ID``
   removes it from the key file (refused while a data key still needs it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from donnadb import db
from donnadb.config import Settings
from donnadb.crypto import envelope, keyfile, kms
from donnadb.crypto.errors import KeyFileError

log = logging.getLogger(__name__)

COUNT_BY_KEK_SQL = """
SELECT kek_id, count(*) AS keys, max(coalesce(key_rewrapped_at, key_created_at)) AS newest
  FROM users WHERE kek_id IS NOT NULL GROUP BY kek_id ORDER BY kek_id
"""
COUNT_KEK_SQL = "SELECT count(*) FROM users WHERE kek_id = %s"
# The next batch after id ``after`` (the keys are columns of users, not indexed: each
# batch goes on along the primary key where the last one stopped, so a rotation reads
# users once, not once per batch).
BATCH_SQL = """
SELECT id::text AS user_id, kek_id, wrapped_key FROM users
 WHERE kek_id <> %(current)s AND id > %(after)s
 ORDER BY id
 LIMIT %(batch)s
   FOR NO KEY UPDATE SKIP LOCKED
"""
REWRAP_SQL = """
UPDATE users SET kek_id = %(kek_id)s, wrapped_key = %(wrapped)s, key_rewrapped_at = now()
 WHERE id = %(user_id)s
"""
DEFAULT_BATCH = 500
#: Below every uuid: where a pass over users starts.
FIRST_ID = "00000000-0000-0000-0000-000000000000"


def _keys(settings: Settings) -> keyfile.KeySet:
    if settings.crypto_kek_file is None:
        raise KeyFileError("CRYPTO_KEK_FILE is not set: point it at the key file")
    return keyfile.load(settings.crypto_kek_file, kms.seal_of(settings))


def status(settings: Settings, *, dbname: str | None = None) -> dict[str, Any]:
    """The KEKs of the key file (current first) and the data keys stored under each KEK
    id; ``missing`` lists ids the data keys use that the key file lacks.

    :raises KeyFileError: no usable key file.
    :raises DatabaseError: the database cannot be reached.
    """
    keys = _keys(settings)
    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        rows = conn.execute(COUNT_BY_KEK_SQL).fetchall()
    in_db = {kek_id: count for kek_id, count, _ in rows}
    file_ids = [k.kek_id for k in keys.keks]
    return {
        "current": keys.current.kek_id,
        "sealed_by": keys.sealed_by,
        "key_file": [{"kek_id": i, "current": i == keys.current.kek_id,
                      "data_keys": in_db.get(i, 0)} for i in file_ids],
        "missing": sorted(i for i in in_db if i not in file_ids),
        "to_rewrap": sum(c for i, c in in_db.items() if i != keys.current.kek_id),
    }


def rotate(settings: Settings, *, dbname: str | None = None, batch: int = DEFAULT_BATCH,
           progress: Callable[[int], object] | None = None,
           stop_after: int | None = None) -> dict[str, Any]:
    """Re-wrap every data key not under the current KEK, ``batch`` per transaction.

    ``progress(n)`` is told after each batch how many were re-wrapped so far;
    ``stop_after`` stops after that many batches (a resumable partial run).

    :raises KeyFileError: no usable key file, or a data key's KEK is not in it (nothing
        of that batch is changed).
    :raises DecryptError: a wrapped key was altered (nothing of that batch is changed).
    :raises DatabaseError: the database cannot be reached.
    """
    keys = _keys(settings)
    current = keys.current.kek_id
    done = batches = 0
    after = FIRST_ID
    with db.connection("app", settings=settings, dbname=dbname) as conn:
        while stop_after is None or batches < stop_after:
            with conn.transaction():
                rows = conn.execute(BATCH_SQL, {"current": current, "after": after,
                                                "batch": batch}).fetchall()
                for user_id, kek_id, wrapped in rows:
                    new_id, new_wrapped = envelope.rewrap(keys, user_id, kek_id, wrapped)
                    conn.execute(REWRAP_SQL, {"kek_id": new_id, "wrapped": new_wrapped,
                                              "user_id": user_id})
            if not rows:
                if after == FIRST_ID:
                    break
                # One more pass from the start, for the rows that were locked (SKIP
                # LOCKED) when this one went by.
                after = FIRST_ID
                continue
            after = rows[-1][0]
            done += len(rows)
            batches += 1
            log.info("re-wrapped %d data keys under KEK %s", done, current)
            if progress is not None:
                progress(done)
    left = status(settings, dbname=dbname)["to_rewrap"]
    return {"current": current, "rewrapped": done, "left": left}


def retire(settings: Settings, kek_id: str, *, dbname: str | None = None) -> None:
    """Remove KEK ``kek_id`` from the key file once no data key is wrapped by it.

    :raises KeyFileError: it is the current KEK, not in the file, or still in use.
    """
    keys = _keys(settings)
    if kek_id == keys.current.kek_id:
        raise KeyFileError(f"KEK {kek_id} is the current one: add a new KEK and rotate "
                           "first")
    with db.connection("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        used = conn.execute(COUNT_KEK_SQL, (kek_id,)).fetchone()[0]
    if used:
        raise KeyFileError(f"{used} data keys are still wrapped by KEK {kek_id}: run "
                           "`donnactl keys rotate` to the end first")
    keyfile.drop_kek(settings.crypto_kek_file, kek_id, kms.seal_of(settings))
