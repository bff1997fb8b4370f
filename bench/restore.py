"""Restore speed, logical and physical, at two database sizes: seconds per GiB (absolute)
and the largest database that restores within the 5-minute objective on this machine.

    .venv/bin/python bench/restore.py [--messages 200000,600000] [--jobs 2] [--rounds 3] \
        [--port 5471] [--results bench/results/restore.json]

For each ``--messages`` size, seeds a scratch database with the real schema and indexes
(bench/backup_compression.py) and takes our logical backup of it (not timed). For the
physical side, it makes a throwaway cluster on ``--port`` (5470-5479; its restored copies
start on ``--port`` + 1) archiving to a pgBackRest repository of its own
(donnadb.backup.pitr's ``config_text`` and ``archive_conf_text``, as the PITR drill
does), loads each size's dump into a database of it and takes a full pgBackRest backup
after each (not timed): the second backup holds both databases. Then, once per round for
``--rounds`` interleaved rounds, every size and kind:

- logical: ``restore.restore_backup`` into a new database (re-hash, create + bootstrap,
  pg_restore -j, grants, ANALYZE, row-count comparison, rename into place);
- physical: ``pgbackrest restore --set=<that backup> --type=immediate`` into a new data
  directory, then the server started on it until it accepts queries as a primary.

What a side made is dropped after it, untimed. The figures are absolute (seconds on
this machine, per GiB of the database restored: the source's ``pg_database_size`` for
logical, the backed-up cluster's size for physical); there is no baseline to divide by,
the two kinds are printed side by side. The largest database within 5 minutes is derived
linearly from the sizes measured: the line through the slowest restore at each size
(fixed seconds + seconds per GiB); two sizes show whether the time is linear in the size.
Everything made is removed at the end. Run as root on the deployed host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from backup_compression import seeded_database
from report import header, interleaved, not_busy, save_raw, span
from scratch import busy_if_turned_away

from donnadb.backup import bootstrap, pgtools, pitr, restore, snapshot
from donnadb.backup import manifest as mf
from donnadb.config import load_settings
from donnadb.db import as_cluster_owner, superuser_psql

RTO_SECONDS = 300
#: Throwaway clusters live on these ports only (the deployed one is on 5432).
PORTS = range(5470, 5480)
RESULTS = Path(__file__).resolve().parent / "results" / "restore.json"
SQL_PROMOTED = "SELECT NOT pg_is_in_recovery()"
SQL_CLUSTER_BYTES = "SELECT sum(pg_database_size(oid)) FROM pg_database"


@contextmanager
def throwaway_cluster(version: int, port: int):
    """A new cluster on ``port`` archiving to its own pgBackRest repository (stanza
    created); yields its Engine and a work directory the postgres user owns."""
    name = f"benchrst{uuid.uuid4().hex[:6]}"
    # the postgres user must reach it (pgBackRest's repository, logs, restored copies)
    work = Path(tempfile.mkdtemp(prefix=f"donna-{name}-", dir="/var/tmp"))  # noqa: S108
    shutil.chown(work, "postgres", "postgres")
    cluster = pitr.Cluster(version, name, port, Path(f"/var/lib/postgresql/{version}/{name}"))
    engine = pitr.Engine(work / "pgbackrest.conf", "bench", cluster)
    try:
        subprocess.run(["pg_createcluster", str(version), name, "-p", str(port)], check=True,
                       capture_output=True)
        engine.config.write_text(pitr.config_text(
            stanza="bench", repo_path=work / "repo", cluster=cluster, log_path=work,
            lock_path=work / "lock", retention_full=9))
        shutil.chown(engine.config, "postgres", "postgres")
        (cluster.conf_dir / "conf.d" / "archive.conf").write_text(
            pitr.archive_conf_text(engine))
        subprocess.run(["pg_ctlcluster", str(version), name, "start"], check=True,
                       capture_output=True)
        pitr.stanza_create(engine)
        yield engine, work
    finally:
        for copy in work.glob("copy-*"):
            if (copy / "postmaster.pid").exists():
                subprocess.run(as_cluster_owner([str(cluster.bin_dir / "pg_ctl"), "-D",
                                                 str(copy), "-m", "immediate", "stop"]),
                               capture_output=True, check=False)
        subprocess.run(["pg_dropcluster", "--stop", str(version), name], capture_output=True,
                       check=False)
        shutil.rmtree(cluster.conf_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def load_dump(pg_restore: str, backup, dbname: str, port: int) -> None:
    """Load a logical backup's dump into ``dbname`` of the throwaway cluster (as its
    superuser, owners and grants left out: the cluster has none of the deploy's roles).

    :raises RuntimeError: the rows did not arrive (counted against the manifest).
    """
    superuser_psql(f'CREATE DATABASE "{dbname}"', port=port)
    dump = subprocess.Popen([pg_restore, "--no-owner", "--no-privileges", "-f", "-",
                             str(backup.path / mf.DUMP_DIR)], stdout=subprocess.PIPE)
    subprocess.run(as_cluster_owner(["psql", "-X", "-q", "-p", str(port), "-d", dbname]),
                   stdin=dump.stdout, capture_output=True, check=False, cwd="/")
    dump.wait()
    want = backup.manifest.row_counts["public.messages"]
    got = int(superuser_psql("SELECT count(*) FROM messages", dbname, port=port))
    if got != want:
        raise RuntimeError(f"{dbname} on port {port} holds {got} messages, not {want}")


def full_backup(engine: pitr.Engine) -> dict:
    """A full pgBackRest backup; its ``info`` entry (label, sizes)."""
    superuser_psql("CHECKPOINT", port=engine.cluster.port)
    engine.run("backup", "--type=full")
    return json.loads(engine.run("info", "--output=json"))[0]["backup"][-1]


def wait_promoted(port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while superuser_psql(SQL_PROMOTED, port=port) != "t":
        if time.monotonic() > deadline:
            raise RuntimeError(f"the restored copy on port {port} is not up after "
                               f"{timeout:.0f} s; see its pitr.log")
        time.sleep(0.1)


def linear_limit(sizes_gib: list[float], seconds: list[float]) -> tuple[float, float, float]:
    """(fixed seconds, seconds per GiB, GiB within RTO_SECONDS) of the line through two
    measured (size, seconds) points; a line that does not rise (noise at two close
    sizes) gives way to the rate at the larger size."""
    (g1, g2), (t1, t2) = sizes_gib, seconds
    slope = (t2 - t1) / (g2 - g1) if g2 != g1 else 0.0
    if slope <= 0:
        slope, fixed = t2 / g2, 0.0
    else:
        fixed = t1 - slope * g1
    return fixed, slope, (RTO_SECONDS - fixed) / slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", default="200000,600000",
                        help="two database sizes, in seeded messages")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds, every side once per round")
    parser.add_argument("--port", type=int, default=5471,
                        help="the throwaway cluster's port; its copies use the next one")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where the raw figures go (JSON)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.messages.split(",")]
    if len(sizes) != 2 or sizes[0] >= sizes[1]:
        parser.error("--messages takes two sizes, smaller first (e.g. 200000,600000)")
    if args.port not in PORTS or args.port + 1 not in PORTS:
        parser.error(f"--port must leave it and the next port within {PORTS.start}-"
                     f"{PORTS.stop - 1}, the throwaway clusters' ports")
    head = header("bench/restore.py", args.rounds)
    print(head, flush=True)
    work = Path(tempfile.mkdtemp(prefix="donna-bench-restore-"))
    settings = load_settings(backup_repo_dir=work / "repo", backup_jobs=args.jobs)
    settings = settings.model_copy(update={"backup_encryption_key_file": None,
                                           "backup_age_recipients_file": None})
    copy_port = args.port + 1
    made: list[str] = []  # logical targets, dropped after each side and at the end
    try:
        with ExitStack() as stack:
            engine, cwork = stack.enter_context(
                throwaway_cluster(settings.pg_version, args.port))
            logical: list[tuple] = []  # (backup, database bytes)
            physical: list[dict] = []  # pgBackRest info of the backup holding sizes 1..i
            for i, messages in enumerate(sizes):
                name, db_size = stack.enter_context(seeded_database(settings, messages))
                taken = []

                def take(name=name, taken=taken):
                    taken.append(snapshot.create_backup(settings, dbname=name))

                not_busy(busy_if_turned_away(take))
                backup = taken[0]
                logical.append((backup, db_size))
                t = time.monotonic()
                load_dump(pgtools.tool(settings, "pg_restore"), backup, f"size{i}", args.port)
                physical.append(full_backup(engine))
                info = physical[-1]["info"]
                print(f"physical: size {i} loaded and backed up in "
                      f"{time.monotonic() - t:.1f} s; cluster {info['size'] / 2**20:.0f} MiB, "
                      f"repository {info['repository']['size'] / 2**20:.0f} MiB", flush=True)
            sides = {}
            for i, (backup, _) in enumerate(logical):
                def run_logical(backup=backup):
                    target = f"donna_bench_rst_{uuid.uuid4().hex[:8]}"
                    made.append(target)
                    restore.restore_backup(settings, backup, target)
                sides[f"logical {sizes[i]}"] = run_logical
            for i, info in enumerate(physical):
                def run_physical(label=info["label"], i=i):
                    dest = cwork / f"copy-{i}-{uuid.uuid4().hex[:6]}"
                    dest.mkdir(mode=0o700)
                    shutil.chown(dest, "postgres", "postgres")
                    engine.run("restore", f"--pg1-path={dest}", f"--set={label}",
                               "--type=immediate", "--target-action=promote",
                               "--archive-mode=off")
                    pitr.start_copy(engine.cluster, dest, copy_port)
                    wait_promoted(copy_port)
                sides[f"physical {sizes[i]}"] = run_physical

            def after(side: str) -> None:
                while made:
                    bootstrap.drop_database(made.pop())
                for copy in cwork.glob("copy-*"):
                    pitr.stop_copy(engine.cluster, copy)
                    shutil.rmtree(copy)

            def each(r: int, this: dict[str, float]) -> None:
                print(f"round {r}: " + ", ".join(f"{k} {v:.2f} s" for k, v in this.items()),
                      flush=True)

            times = interleaved(sides, args.rounds, each, after)
            report(args, head, sizes, logical, physical, times)
    finally:
        for name in made:
            bootstrap.drop_database(name)
        shutil.rmtree(work, ignore_errors=True)


def report(args, head, sizes, logical, physical, times) -> None:
    kinds = {"logical": [size for _, size in logical],
             "physical": [info["info"]["size"] for info in physical]}
    print(f"absolute figures on this machine (no baseline: logical and physical side by "
          f"side), jobs {args.jobs}, min-max over {args.rounds} rounds")
    print(f"{'kind':<9} {'messages':>9} {'GiB':>7} {'seconds':>13} {'s per GiB':>13}")
    raw = {}
    for kind, size_bytes in kinds.items():
        gib = [b / 2**30 for b in size_bytes]
        per_gib = []
        for i, messages in enumerate(sizes):
            secs = times[f"{kind} {messages}"]
            per_gib.append([s / gib[i] for s in secs])
            print(f"{kind:<9} {messages:>9} {gib[i]:>7.3f} {span(secs):>13} "
                  f"{span(per_gib[-1], '{:.1f}'):>13}")
        slowest = [max(times[f"{kind} {m}"]) for m in sizes]
        fixed, slope, limit = linear_limit(gib, slowest)
        spread = max(per_gib[0]) / max(per_gib[1])
        print(f"{kind}: derived linearly from the measured sizes (line through the slowest "
              f"restore at each): {fixed:.1f} s fixed + {slope:.1f} s per GiB -> about "
              f"{limit:.1f} GiB restore within {RTO_SECONDS} s here; s per GiB at the "
              f"smaller size / at the larger: {spread:.2f} (1.00 = proportional to size)")
        raw[kind] = {"bytes": size_bytes, "seconds": [times[f"{kind} {m}"] for m in sizes],
                     "fixed_seconds": fixed, "seconds_per_gib": slope,
                     "gib_within_rto": limit, "per_gib_small_over_large": spread}
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    save_raw(args.results, head, args.rounds, {
        "args": {"messages": sizes, "jobs": args.jobs}, "rto_seconds": RTO_SECONDS,
        "kinds": raw, "physical_backups": [p["label"] for p in physical]})
    print(f"raw figures: {args.results}")


if __name__ == "__main__":
    main()
