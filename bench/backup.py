"""Our backup and restore against plain pg_dump/pg_restore, same database, same process.

    .venv/bin/python bench/backup.py [--messages 3000000] [--jobs 2] [--rounds 3]

Seeds a scratch database with the real schema and indexes (bench/backup_compression.py),
then times, once per round for ``--rounds`` interleaved rounds:

- baseline: ``pg_dump -Fd -j2 -Z1`` and ``pg_restore -j2`` into an empty bootstrapped DB;
- ours: ``donnadb.backup.snapshot.create_backup`` (snapshot export, exact row counts,
  sha256 of every file, fsync, atomic rename) and ``restore.restore_backup`` (re-hash,
  create + bootstrap, pg_restore -j2, grants, ANALYZE, row-count comparison).

Prints each round, the ranges of the overhead ratios (goal <= 1.15, each ratio from
one round) and the restore time per GiB, from which the largest database that restores
within the 5-minute recovery-time objective follows. That figure takes the slowest
restore measured, ours or plain pg_restore (ours runs pg_restore and more, so a round in
which it beat pg_restore only shows noise).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from backup_compression import seeded_database
from report import header, interleaved, ratios, span

from donnadb.backup import bootstrap, pgtools, restore, snapshot
from donnadb.config import load_settings

RTO_SECONDS = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds, every side once per round")
    args = parser.parse_args()
    print(header("bench/backup.py", args.rounds), flush=True)
    work = Path(tempfile.mkdtemp(prefix="donna-bench-backup-"))
    settings = load_settings(backup_repo_dir=work / "repo", backup_jobs=args.jobs)
    settings = settings.model_copy(update={"backup_encryption_key_file": None})
    target = "donna_bench_restore"
    kept: list[str] = []
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
                # the entries the bootstrap made (extensions, its schemas and what is in
                # them) must be skipped here too, as our restore skips them
                toc = pgtools.run([pg_restore, "-l", str(plain)], env, "pg_restore -l")
                listing = work / "plain.toc"
                made_by_bootstrap = (" EXTENSION ", " SCHEMA - ",
                                     *(f" {s} " for s in restore.BOOTSTRAP_SCHEMAS))
                listing.write_text("\n".join(
                    ln for ln in toc.splitlines()
                    if not any(m in ln for m in made_by_bootstrap)) + "\n")
                pgtools.run([pg_restore, f"-d{target}", f"-j{args.jobs}",
                             f"--role={settings.db_role_owner}", "--no-owner", "-x",
                             f"-L{listing}", str(plain)], env, "pg_restore")

            made = []

            def ours_dump():
                made.append(snapshot.create_backup(settings, dbname=name))

            phases = []

            def ours_restore():
                done = restore.restore_backup(settings, made[-1], target, force=True)
                phases.append(done.phases)
                if done.kept_as:  # the replaced copy a restore keeps; dropped at the end
                    kept.append(done.kept_as)

            def each(r: int, this: dict[str, float]) -> None:
                print(f"round {r}: " + ", ".join(f"{k} {v:.2f} s" for k, v in this.items()),
                      flush=True)

            t = interleaved({"pg_dump": plain_dump, "ours backup": ours_dump,
                             "pg_restore": plain_restore, "ours restore": ours_restore},
                            args.rounds, each)
            gib = db_size / 2**30
            print(f"database {db_size / 2**20:.0f} MiB, jobs {args.jobs}, gzip "
                  f"{settings.backup_compress_level}; min-max over {args.rounds} rounds, "
                  "ratios per round")
            print(f"backup : pg_dump {span(t['pg_dump'])} s  ours {span(t['ours backup'])} s"
                  f"  ratio {span(ratios(t['ours backup'], t['pg_dump']), '{:.3f}')}")
            print(f"restore: pg_restore {span(t['pg_restore'])} s  ours "
                  f"{span(t['ours restore'])} s  ratio "
                  f"{span(ratios(t['ours restore'], t['pg_restore']), '{:.3f}')}")
            print("restore phases (last round): "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in phases[-1].items()))
            plain_per_gib = [x / gib for x in t["pg_restore"]]
            ours_per_gib = [x / gib for x in t["ours restore"]]
            slowest = max(plain_per_gib + ours_per_gib)
            print(f"restore: pg_restore {span(plain_per_gib, '{:.1f}')} s per GiB, ours "
                  f"{span(ours_per_gib, '{:.1f}')} s per GiB -> at the slowest "
                  f"({slowest:.1f} s per GiB) about {RTO_SECONDS / slowest:.1f} GiB restore "
                  f"within {RTO_SECONDS} s here")
            print(f"load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        for name in [target, *kept]:
            bootstrap.drop_database(name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
