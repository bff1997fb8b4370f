"""Our backup, S3 upload and restore against plain pg_dump, boto3 and pg_restore, same
database, same process.

    .venv/bin/python bench/backup.py [--messages 3000000] [--jobs 2] [--rounds 3] \
        [--big-file-mib 256] \
        [--results bench/results/backup.json]

Seeds a scratch database with the real schema and indexes (bench/backup_compression.py),
starts moto's S3 server (``moto_server``, its own process, on 127.0.0.1), then times,
once per round for ``--rounds`` interleaved rounds:

- baselines: ``pg_dump -Fd -j2`` as an operator types it (pg_dump's default gzip level),
  the same at our gzip level (``-Z1``, so that ratio is the cost of what ours adds: the
  checksum scan, hashes, fsync), and ``pg_restore -j2`` into an empty bootstrapped DB;
- ours: ``donnadb.backup.snapshot.create_backup`` (snapshot export, exact row counts,
  sha256 of every file, SHA256SUMS, fsync, atomic rename) and ``restore.restore_backup``
  (re-hash, create + bootstrap, pg_restore -j2, grants, ANALYZE, row-count comparison);
- S3 baseline: boto3's ``upload_file`` with its default settings, file by file, of the
  bytes of the backup ours just made; ours: ``S3Store.upload_backup`` of that backup
  (each file re-hashed against the manifest first, our TransferConfig: parts of
  ``BACKUP_S3_MIN_PART_SIZE`` or more, ``BACKUP_S3_CONCURRENCY`` at a time, a CRC32
  per request). Every upload goes to keys of its own (the backup id is new each round);
- the same two uploads of one file of ``--big-file-mib`` random bytes (default 256 MiB),
  where both go up in parts (boto3's default: 8 MiB parts, 10 at a time).

The machine's busy CPU seconds during each backup (all processes, from /proc/stat)
show what bounds the backup's ratio on this machine: pg_dump -j2 already keeps both
cores busy, so the checksum scan our snapshot runs beside it (its seconds alone are
printed too) adds its CPU to the dump's wall time.

Prints each round, the ranges of the ratios (backup: goal <= 1.15 of plain pg_dump's time;
upload: goal >= 1.0 of boto3's default speed, i.e. ours not slower; each ratio from one
round) and the restore time per GiB, from which the largest database that restores
within the 5-minute recovery-time objective follows. That figure takes the slowest
restore measured, ours or plain pg_restore (ours runs pg_restore and more, so a round in
which it beat pg_restore only shows noise). bench/restore.py measures restores on
their own, logical and physical, at two sizes. The raw figures go to ``--results``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from backup_compression import dir_size, seeded_database
from cpushare import with_busy_cpu
from report import header, interleaved, ratios, save_raw, span
from scratch import busy_if_turned_away

from donnadb.backup import bootstrap, pgtools, restore, snapshot
from donnadb.backup import manifest as mf
from donnadb.backup.storage_s3 import S3Store, part_size_for
from donnadb.config import load_settings

RTO_SECONDS = 300
BUCKET = "donna-bench"
RESULTS = Path(__file__).resolve().parent / "results" / "backup.json"


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server in a process of its own on 127.0.0.1 (its endpoint URL), so that
    serving does not share this process's interpreter with the clients timed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")),
                               "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # moto accepts any credentials; these exist only for this server.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start; pip install "
                                       "'moto[server]' into .venv") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def random_file(path: Path, mib: int) -> Path:
    """``mib`` MiB of random bytes (nothing compresses or deduplicates them)."""
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(2**20))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--big-file-mib", type=int, default=256,
                        help="size of the one-file upload pair (MiB)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds, every side once per round")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where the raw figures go (JSON)")
    args = parser.parse_args()
    head = header("bench/backup.py", args.rounds)
    print(head, flush=True)
    work = Path(tempfile.mkdtemp(prefix="donna-bench-backup-"))
    settings = load_settings(backup_repo_dir=work / "repo", backup_jobs=args.jobs)
    settings = settings.model_copy(update={"backup_encryption_key_file": None})
    target = "donna_bench_restore"
    kept: list[str] = []
    try:
        with seeded_database(settings, args.messages) as (name, db_size), \
                moto_s3() as endpoint:
            s3_settings = settings.model_copy(update={
                "backup_s3_bucket": BUCKET, "backup_s3_endpoint_url": endpoint,
                "backup_s3_region": "us-east-1", "backup_s3_prefix": "ours/"})
            store = S3Store(s3_settings)
            store.client.create_bucket(Bucket=BUCKET)
            plain_client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            pg_dump = pgtools.tool(settings, "pg_dump")
            pg_restore = pgtools.tool(settings, "pg_restore")
            dump_env = pgtools.libpq_env(settings, settings.role("backup"), name)
            plain = work / "plain"
            as_typed = work / "as-typed"
            typed_bytes: list[int] = []

            def typed_dump():
                shutil.rmtree(as_typed, ignore_errors=True)
                pgtools.run([pg_dump, "-Fd", f"-j{args.jobs}", f"-f{as_typed}"],
                            dump_env, "pg_dump")
                typed_bytes.append(dir_size(as_typed))

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
            ours_bytes: list[int] = []

            def ours_dump():
                made.append(snapshot.create_backup(settings, dbname=name))
                ours_bytes.append(dir_size(made[-1].path))

            def backup_files() -> list[Path]:
                """Every file of the backup ours made last (dump, SHA256SUMS, manifest)."""
                return sorted(p for p in made[-1].path.rglob("*") if p.is_file())

            uploaded: list[int] = []

            def plain_upload():
                sent = 0
                for path in backup_files():
                    key = f"plain/{path.relative_to(made[-1].path.parent).as_posix()}"
                    plain_client.upload_file(str(path), BUCKET, key)
                    sent += path.stat().st_size
                uploaded.append(sent)

            def ours_upload():
                store.upload_backup(made[-1])

            big = random_file(work / "big.dat", args.big_file_mib)
            digest, size = mf.sha256_file(big)
            big_entry = mf.FileEntry("big.dat", size, digest)
            big_sent: list[str] = []

            def plain_big():
                big_sent.append(f"plain-big/{len(big_sent)}")
                plain_client.upload_file(str(big), BUCKET, big_sent[-1])

            def ours_big():
                big_sent.append(f"ours-big/{len(big_sent)}")
                store.upload_file(big, big_sent[-1], big_entry)

            phases = []

            def ours_restore():
                done = restore.restore_backup(settings, made[-1], target, force=True)
                phases.append(done.phases)
                if done.kept_as:  # the replaced copy a restore keeps; dropped at the end
                    kept.append(done.kept_as)

            def each(r: int, this: dict[str, float]) -> None:
                print(f"round {r}: " + ", ".join(f"{k} {v:.2f} s" for k, v in this.items()),
                      flush=True)

            cpu: dict[str, list[float]] = {"pg_dump as typed": [], "pg_dump": [],
                                           "ours backup": []}
            t = interleaved({"pg_dump as typed": busy_if_turned_away(
                                 with_busy_cpu(typed_dump, cpu["pg_dump as typed"])),
                             "pg_dump": busy_if_turned_away(
                                 with_busy_cpu(plain_dump, cpu["pg_dump"])),
                             "ours backup": busy_if_turned_away(
                                 with_busy_cpu(ours_dump, cpu["ours backup"])),
                             "boto3 upload_file": plain_upload, "ours S3 upload": ours_upload,
                             "boto3 big file": plain_big, "ours big file": ours_big,
                             "pg_restore": plain_restore, "ours restore": ours_restore},
                            args.rounds, each)
            cores = os.cpu_count() or 1
            facts = [b.manifest.extra["facts_seconds"] for b in made]
            gib = db_size / 2**30
            print(f"database {db_size / 2**20:.0f} MiB, jobs {args.jobs}, gzip "
                  f"{settings.backup_compress_level}; min-max over {args.rounds} rounds, "
                  "ratios per round")
            typed_ratio = ratios(t["ours backup"], t["pg_dump as typed"])
            print(f"backup : pg_dump -Fd -j{args.jobs} as typed (default gzip level) "
                  f"{span(t['pg_dump as typed'])} s  ours {span(t['ours backup'])} s  ratio "
                  f"{span(typed_ratio, '{:.3f}')}; sizes {typed_bytes[-1] / 2**20:.0f} MiB "
                  f"and {ours_bytes[-1] / 2**20:.0f} MiB")
            print(f"backup : pg_dump -Fd -j{args.jobs} -Z{settings.backup_compress_level} "
                  f"(our level) {span(t['pg_dump'])} s  ours {span(t['ours backup'])} s  "
                  f"ratio {span(ratios(t['ours backup'], t['pg_dump']), '{:.3f}')} (what "
                  "ours adds at the same compression)")
            for side in cpu:
                share = [c / (w * cores) for c, w in zip(cpu[side], t[side], strict=True)]
                print(f"backup : {side}: machine busy {span(cpu[side])} CPU s, "
                      f"{span([x * 100 for x in share], '{:.0f}')}% of {cores} cores")
            print(f"backup : ours' checksum scan alone {span(facts)} s (beside the dump, on "
                  "its own connection)")
            mib = uploaded[-1] / 2**20
            speedup = ratios(t["boto3 upload_file"], t["ours S3 upload"])
            big_speedup = ratios(t["boto3 big file"], t["ours big file"])
            print(f"upload : {mib:.0f} MiB in {len(backup_files())} files to moto on 127.0.0.1; "
                  f"boto3 default {span(t['boto3 upload_file'])} s  ours "
                  f"{span(t['ours S3 upload'])} s  speed ratio ours/boto3 "
                  f"{span(speedup, '{:.3f}')} (time boto3 / time ours; part >= "
                  f"{settings.backup_s3_min_part_size // 2**20} MiB, concurrency "
                  f"{settings.backup_s3_concurrency})")
            print(f"upload : one {args.big_file_mib} MiB file; boto3 default "
                  f"{span(t['boto3 big file'])} s  ours {span(t['ours big file'])} s  speed "
                  f"ratio ours/boto3 {span(big_speedup, '{:.3f}')} (part "
                  f"{part_size_for(size, settings.backup_s3_min_part_size) // 2**20} MiB)")
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
            save_raw(args.results, head, args.rounds, {
                "args": {"messages": args.messages, "jobs": args.jobs},
                "database_bytes": db_size, "uploaded_bytes": uploaded,
                "seconds": t, "backup_ratio_as_typed": typed_ratio,
                "backup_ratio": ratios(t["ours backup"], t["pg_dump"]),
                "dump_bytes": {"pg_dump as typed": typed_bytes, "ours backup": ours_bytes},
                "upload_speed_ratio": speedup, "big_file_upload_speed_ratio": big_speedup,
                "busy_cpu_seconds": cpu, "checksum_scan_seconds": facts,
                "restore_ratio": ratios(t["ours restore"], t["pg_restore"]),
                "restore_phases_last_round": phases[-1],
                "settings": {"compress_level": settings.backup_compress_level,
                             "s3_min_part_size": settings.backup_s3_min_part_size,
                             "s3_concurrency": settings.backup_s3_concurrency}})
            print(f"raw figures: {args.results}")
    finally:
        for name in [target, *kept]:
            bootstrap.drop_database(name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
