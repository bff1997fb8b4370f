"""The downtime of rolling chats back to the files: the exports, against reading the same
rows out with plain COPY, same run.

    .venv/bin/python bench/rollback.py                     # 1,000,000 messages
    .venv/bin/python bench/rollback.py --messages 200000   # a quick run

Rolling chats and messages back after the files were retired is a stop-start
(docs/runbook.md): every application process is stopped while ``migrate-data export
--entity memory`` and ``--entity chats`` write the files, then the processes start in
``dual``. The stop lasts the two exports plus the restart; this measures the exports.

1. generates a data directory (donnadb.legacy.fixtures, no deviations; ``--data-dir``
   keeps it and reuses it) and imports it into a migrated scratch database with the
   host's settings (sealed when CRYPTO_ENABLED is on, as a deployment's database is),
   then vacuums and analyses it (as autovacuum has a live database);
2. per round, in an order rotated each round: the two exports into new, empty
   directories, as the command runs them (readonly role, one snapshot each, sealed
   values opened); and the baseline: ``COPY ... TO STDOUT`` of the rows they read
   (users, user_memory, chat_sessions, messages), received and dropped, the least any
   export must do;
3. prints each round, then the exports' seconds (**kind**: absolute, the stop's
   floor at this scale) and their ratio to the baseline (**kind**: ratio, per round),
   as min-max ranges over ``--rounds`` (default 3).

Run as root on the deployed host (scratch databases through the postgres superuser).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from report import header, ratios, rotated, span
from scratch import create_scratch_database, drop_database

from donnadb import db
from donnadb.config import load_settings
from donnadb.legacy.export import export_data_dir
from donnadb.legacy.fixtures import generate
from donnadb.legacy.importer import import_data_dir
from donnadb.legacy.reader import LegacyReader
from donnadb.legacy.sealing import sealer_for
from donnadb.migrate import apply_migrations

#: What the two exports read, table by table.
TABLES = ("users", "user_memory", "chat_sessions", "messages")


def _exports(settings, dbname: str, out: Path) -> dict[str, int]:
    """Both exports of the chats rollback, one after the other; their files' count."""
    sealer = sealer_for(settings)
    written: dict[str, int] = {}
    for entity in ("memory", "chats"):
        with db.connect("readonly", settings=settings, dbname=dbname,
                        autocommit=True) as conn:
            summary = export_data_dir(conn, out / entity, entity=entity, sealer=sealer)
        written.update(summary.written)
    return written


def _copy_out(settings, dbname: str) -> int:
    """The same tables read out with COPY (text), every byte received and dropped."""
    received = 0
    with db.connect("readonly", settings=settings, dbname=dbname, autocommit=True) as conn:
        for table in TABLES:
            with conn.cursor() as cur, cur.copy(f"COPY {table} TO STDOUT") as copy:
                for block in copy:
                    received += len(block)
    return received


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="generate here (reused when it already exists) instead of a tmp dir")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    chats = max(1, args.messages // 50)
    settings = load_settings()
    print(header("bench/rollback.py", args.rounds), flush=True)
    sides: dict[str, list[float]] = {"exports": [], "copy": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp) / "data"
        if not root.exists():
            generate(root, users=args.users, chats=chats,
                     messages_per_chat=max(1, args.messages // chats), logs=0,
                     deviations=False)
        name = create_scratch_database(settings, prefix="donna_bench")
        try:
            apply_migrations(settings=settings, dbname=name)
            with db.connect("migrator", settings=settings, dbname=name,
                            autocommit=True) as conn:
                summary = import_data_dir(LegacyReader.open(root), conn,
                                          batch_size=settings.migration_batch_size,
                                          owner_role=settings.db_role_owner,
                                          sealer=sealer_for(settings))
                # A live database's rows are vacuumed and analysed; a fresh import's are
                # not, and autovacuum would otherwise take them on during the rounds.
                conn.execute(f"SET ROLE {settings.db_role_owner}")
                conn.execute("VACUUM (ANALYZE)")
            print(f"imported {summary.read['messages']:,} messages, "
                  f"{summary.read['chat_sessions']:,} chats, {summary.read['users']:,} users "
                  f"(field encryption {'on' if settings.crypto_enabled else 'off'})",
                  flush=True)
            written: dict[str, int] = {}
            received = 0
            for r in range(1, args.rounds + 1):
                this = {}
                for side in rotated(("exports", "copy"), r):
                    out = Path(tmp) / f"out-{r}"
                    t = time.perf_counter()
                    if side == "exports":
                        written = _exports(settings, name, out)
                    else:
                        received = _copy_out(settings, name)
                    this[side] = time.perf_counter() - t
                    shutil.rmtree(out, ignore_errors=True)
                for side, secs in this.items():
                    sides[side].append(secs)
                print(f"round {r}: exports (memory, chats) {this['exports']:.2f}s, COPY out "
                      f"{this['copy']:.2f}s", flush=True)
        finally:
            drop_database(name)
    n = summary.read["messages"]
    print(f"{n:,} messages; the exports wrote {written}; COPY received {received:,} bytes; "
          f"min-max over {args.rounds} rounds, ratios per round")
    print(f"exports (the rollback's stop, without the restart): {span(sides['exports'])}s "
          f"(absolute), {span([n / x for x in sides['exports']], '{:,.0f}')} messages/s")
    print(f"COPY of the same tables: {span(sides['copy'])}s")
    print(f"exports / COPY: {span(ratios(sides['exports'], sides['copy']))}x")


if __name__ == "__main__":
    main()
