"""Our backup and restore against plain pg_dump/pg_restore, same database, same process.

    .venv/bin/python bench/backup.py [--messages 3000000] [--jobs 2]

Seeds a scratch database with the real schema and indexes (bench/backup_compression.py),
then times, best of --repeat runs each:

- baseline: ``pg_dump -Fd -j2 -Z1`` and ``pg_restore -j2`` into an empty bootstrapped DB;
- ours: ``donnadb.backup.snapshot.create_backup`` (snapshot export, exact row counts,
  sha256 of every file, fsync, atomic rename) and ``restore.restore_backup`` (re-hash,
  create + bootstrap, pg_restore -j2, grants, ANALYZE, row-count comparison).

Prints the overhead ratios (goal <= 1.15) and the restore time per GiB, from which the
largest database that restores within the 5-minute recovery-time objective follows.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from backup_compression import seeded_database

from donnadb.backup import bootstrap, pgtools, restore, snapshot
from donnadb.config import load_settings

RTO_SECONDS = 300


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t = time.monotonic()
        fn()
        times.append(time.monotonic() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="donna-bench-backup-"))
    settings = load_settings(backup_repo_dir=work / "repo", backup_jobs=args.jobs)
    settings = settings.model_copy(update={"backup_encryption_key_file": None})
    target = "donna_bench_restore"
    try:
        with seeded_database(settings, args.messages) as (name, db_size):
            pg_dump = pgtools.tool(settings, "pg_dump")
            pg_restore = pgtools.tool(settings, "pg_restore")
            dump_env = pgtools.libpq_env(settings, settings.role("backup"), name)
            plain = work / "plain"

            def plain_dump():
                shutil.rmtree(plain, ignore_errors=True)
                pgtools.run([pg_dump, "-Fd", f"-j{args.jobs}",
                             f"-Z{settings.backup_compress_level}", f"-f{plain}"],
                            dump_env, "pg_dump")

            def plain_restore():
                bootstrap.drop_database(target)
                bootstrap.create_database(settings, target)
                env = pgtools.libpq_env(settings, settings.role("migrator"), target)
                # the same extension entries the bootstrap made must be skipped here too
                toc = pgtools.run([pg_restore, "-l", str(plain)], env, "pg_restore -l")
                listing = work / "plain.toc"
                listing.write_text("\n".join(
                    ln for ln in toc.splitlines()
                    if " EXTENSION " not in ln and " SCHEMA - partman " not in ln) + "\n")
                pgtools.run([pg_restore, f"-d{target}", f"-j{args.jobs}",
                             f"--role={settings.db_role_owner}", "--no-owner", "-x",
                             f"-L{listing}", str(plain)], env, "pg_restore")

            made = []

            def ours_dump():
                made.append(snapshot.create_backup(settings, dbname=name))

            phases = []

            def ours_restore():
                phases.append(restore.restore_backup(settings, made[-1], target,
                                                     force=True).phases)

            t_dump = best_of(args.repeat, plain_dump)
            t_ours_dump = best_of(args.repeat, ours_dump)
            t_restore = best_of(args.repeat, plain_restore)
            t_ours_restore = best_of(args.repeat, ours_restore)
            gib = db_size / 2**30
            print(f"database {db_size / 2**20:.0f} MiB, jobs {args.jobs}, gzip "
                  f"{settings.backup_compress_level}, best of {args.repeat}")
            print(f"backup : pg_dump {t_dump:7.2f} s  ours {t_ours_dump:7.2f} s  "
                  f"ratio {t_ours_dump / t_dump:.3f}")
            print(f"restore: pg_restore {t_restore:7.2f} s  ours {t_ours_restore:7.2f} s  "
                  f"ratio {t_ours_restore / t_restore:.3f}")
            print("restore phases (last run): "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in phases[-1].items()))
            per_gib = t_ours_restore / gib
            print(f"restore: {per_gib:.1f} s per GiB -> about {RTO_SECONDS / per_gib:.1f} GiB "
                  f"restore within {RTO_SECONDS} s here")
    finally:
        bootstrap.drop_database(target)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
