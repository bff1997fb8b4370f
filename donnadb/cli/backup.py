"""``donnactl backup ...``: parsing and printing around donnadb.backup."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from donnadb.backup import (
    agecrypt,
    catalog,
    crypto,
    erasures,
    ledgercopy,
    pitr,
    restore,
    snapshot,
    storage_local,
    swap,
    verify,
)
from donnadb.backup.check import check_backups
from donnadb.backup.errors import BackupCorrupt, BackupNotFound, BackupStale, DrillFailed
from donnadb.backup.prune import prune as run_prune
from donnadb.backup.storage_s3 import RemoteBackup, S3Store, check_backup_id
from donnadb.cli.erasurecopy import ledger_copy, print_ledger_copy
from donnadb.cli.opsrun import backup_member_only, confirm, leader_only, logged, skip_job
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit_json
from donnadb.config import Settings, load_settings
from donnadb.errors import ConfigError, UsageError

app = typer.Typer(no_args_is_help=True)

RepoOpt = typer.Option(None, "--repo", help="Local repository (default: BACKUP_REPO_DIR).")
JobsOpt = typer.Option(None, "--jobs", "-j", min=1, help="Parallel jobs (BACKUP_JOBS).")
#: The scheduled jobs pass it: on a cluster one member takes the backups (a healthy
#: replica, else the leader); the others skip. A single host always takes them.
BackupMemberOpt = typer.Option(
    False, "--if-backup-member",
    help="On a cluster, skip (exit 0) unless this member takes the cluster's backups.")
UnsignedOpt = typer.Option(
    False, "--allow-unsigned",
    help="Accept an S3 backup whose manifest has no signature (made before manifests were "
         "signed). A wrong or unknown signature is refused all the same.")
UnencryptedOpt = typer.Option(
    False, "--allow-unencrypted",
    help="Restore a backup that is not encrypted although BACKUP_ENCRYPTION_KEY_FILE is set.")
IdentityOpt = typer.Option(
    None, "--identity",
    help="age private key file (0600) of an age-encrypted backup "
         "(default: BACKUP_AGE_IDENTITY_FILE).")


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return str(n)


def _path(name: str | None) -> Path | None:
    """A file named on the command line, made absolute (settings hold absolute paths)."""
    return Path(name).resolve() if name else None


def _transfer(total: int, what: str, quiet: bool) -> tuple[Progress | None, object]:
    if quiet:
        return None, None
    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        DownloadColumn(), TransferSpeedColumn(), console=console)
    task = progress.add_task(what, total=total)
    return progress, lambda n: progress.advance(task, n)


def _local_or_download(settings: Settings, backup_id: str, quiet: bool, *,
                       allow_unsigned: bool = False) -> storage_local.LocalBackup:
    try:
        return storage_local.resolve(settings.backup_repo_dir, backup_id)
    except BackupNotFound:
        if not settings.s3_enabled:
            raise
    if backup_id != "latest":
        check_backup_id(backup_id)
    store = S3Store(settings, allow_unsigned=allow_unsigned)
    remote = _remote(store, backup_id)
    if remote is None and backup_id == "latest":
        raise BackupNotFound("no good backup locally or in S3; run `donnactl backup create`")
    backup_id = remote.backup_id if remote else backup_id
    total = remote.manifest.total_size if remote and remote.manifest else 0
    progress, advance = _transfer(total, f"download {backup_id}", quiet)
    if progress:
        with progress:
            return store.download_backup(backup_id, settings.backup_repo_dir, advance)
    return store.download_backup(backup_id, settings.backup_repo_dir)


def _remote(store: S3Store, backup_id: str) -> RemoteBackup | None:
    """The S3 backup ``backup_id`` names (good or not), or for ``latest`` the newest good
    one; None when there is none. One listing (each manifest read once)."""
    listed = store.list_backups()
    if backup_id == "latest":
        return next((b for b in reversed(listed) if b.good), None)
    return next((b for b in listed if b.backup_id == backup_id), None)


@app.command()
@logged("backup create")
def create(
    dbname: DbOpt = None,
    jobs: int | None = JobsOpt,
    compress_level: int | None = typer.Option(None, "--compress-level", min=0, max=9,
                                              help="gzip level (BACKUP_COMPRESS_LEVEL)."),
    upload: bool | None = typer.Option(None, "--upload/--no-upload",
                                       help="Copy to S3 (default: when BACKUP_S3_BUCKET is set)."),
    repo: str | None = RepoOpt,
    if_backup_member: bool = BackupMemberOpt,
    json_out: JsonOpt = False,
) -> None:
    """Take a logical snapshot (pg_dump -Fd -j) with a manifest; upload it to S3 if set."""
    settings = load_settings(db_name=dbname, backup_repo_dir=repo)
    if if_backup_member:
        backup_member_only(settings, "backup create", json=json_out)
    started = time.monotonic()
    if json_out:
        backup = snapshot.create_backup(settings, jobs=jobs, compress_level=compress_level)
    else:
        with console.status(f"pg_dump of {settings.db_name} ..."):
            backup = snapshot.create_backup(settings, jobs=jobs,
                                            compress_level=compress_level)
    uploaded = False
    if upload or (upload is None and settings.s3_enabled):
        store = S3Store(settings)
        progress, advance = _transfer(backup.manifest.total_size,
                                      f"upload {backup.backup_id}", json_out)
        if progress:
            with progress:
                store.upload_backup(backup, advance)
        else:
            store.upload_backup(backup)
        uploaded = True
    m = backup.manifest
    # The ledger since the previous copy goes off the host with the backup.
    ledger = ledger_copy(settings, m.database) if uploaded else None
    seconds = round(time.monotonic() - started, 2)
    if json_out:
        emit_json({"backup_id": backup.backup_id, "path": str(backup.path), "size": m.total_size,
                   "files": len(m.files), "row_counts": m.row_counts,
                   "schema_version": m.schema_version, "uploaded": uploaded,
                   "erasures_copy": ledger, "seconds": seconds})
        return
    console.print(f"backup [bold]{backup.backup_id}[/] of {m.database}: {len(m.files)} files, "
                  f"{_human(m.total_size)} (database {_human(m.database_size)}), "
                  f"{sum(m.row_counts.values())} rows, schema {m.schema_version or 'none'}, "
                  f"{seconds} s{', uploaded to S3' if uploaded else ''}")
    print_ledger_copy(ledger)


@app.command("push-erasures")
@logged("backup push-erasures")
def push_erasures(dbname: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Copy the erasures ledger's new entries to S3, for restores after losing the host.

    `users forget` and `backup create` copy them too; this makes good a copy that failed."""
    settings = load_settings(db_name=dbname)
    if not settings.s3_enabled:
        raise ConfigError("S3 is not configured (BACKUP_S3_BUCKET): the erasures ledger has "
                          "no copy to push to")
    pushed = ledgercopy.push(settings, settings.db_name)
    if json_out:
        emit_json(pushed.to_dict())
        return
    console.print(f"erasures ledger of {pushed.database}: {pushed.ledger} entries, "
                  f"{pushed.pushed} copied now to {pushed.where}", highlight=False)


@app.command("list")
def list_(
    local: bool = typer.Option(True, "--local/--no-local", help="Include the local repository."),
    s3: bool = typer.Option(True, "--s3/--no-s3", help="Include S3 (when configured)."),
    repo: str | None = RepoOpt,
    json_out: JsonOpt = False,
) -> None:
    """List backups, local and in S3, with age and size."""
    settings = load_settings(backup_repo_dir=repo)
    rows = catalog.all_rows(settings, local=local, remote=s3)
    if json_out:
        emit_json([r.to_dict() for r in rows])
        return
    s3_where = (f", s3://{settings.backup_s3_bucket}/{settings.backup_s3_prefix}"
                if settings.s3_enabled else "")
    table = Table(title=f"backups ({settings.backup_repo_dir}{s3_where})")
    table.add_column("id", no_wrap=True)
    for col in ("where", "state", "age (h)", "size", "database", "schema", "verified"):
        table.add_column(col)
    for r in rows:
        state = "[green]good[/]" if r.good else "[red]incomplete/failed[/]"
        verified = {None: "-", True: "ok", False: "[red]FAILED[/]"}[r.verified]
        table.add_row(r.backup_id, r.where, state, f"{r.age_hours:.1f}" if r.age_hours is not None
                      else "-", _human(r.size), r.database or "-", r.schema_version or "-",
                      verified)
    console.print(table)


@app.command()
def show(backup_id: str = typer.Argument(..., help="Backup id or 'latest'."),
         repo: str | None = RepoOpt, json_out: JsonOpt = False) -> None:
    """Print a local backup's manifest."""
    settings = load_settings(backup_repo_dir=repo)
    backup = storage_local.resolve(settings.backup_repo_dir, backup_id)
    if backup.manifest is None:
        raise BackupCorrupt(f"backup {backup.backup_id} has no readable manifest")
    m = backup.manifest
    if json_out:
        data = {"manifest": json.loads(m.to_json()), "verified": backup.verified,
                "path": str(backup.path)}
        emit_json(data)
        return
    console.print(f"[bold]{m.backup_id}[/] of {m.database} at {backup.path}")
    console.print(f"  {m.started_at} .. {m.finished_at}; PostgreSQL {m.server_version}; "
                  f"schema {m.schema_version or 'none'}; database {_human(m.database_size)}")
    console.print(f"  {len(m.files)} files, {_human(m.total_size)}; gzip level "
                  f"{m.compress_level}; {m.jobs} jobs; tools {m.tools}")
    if m.encryption:
        to = m.encryption.get("recipients") or [f"key id {m.encryption.get('key_id')}"]
        console.print(f"  encrypted ({m.encryption['algorithm']}) to {', '.join(to)}",
                      highlight=False)
    table = Table("table", "rows")
    for name, count in sorted(m.row_counts.items()):
        table.add_row(name, str(count))
    console.print(table)


@app.command(name="verify")
@logged("backup verify")
def verify_(
    backup_id: str = typer.Argument(..., help="Backup id or 'latest'."),
    with_restore: bool = typer.Option(False, "--restore",
                                      help="Also restore into a throwaway database and compare."),
    allow_unencrypted: bool = UnencryptedOpt,
    allow_unsigned: bool = UnsignedOpt,
    identity: str | None = IdentityOpt,
    if_key: bool = typer.Option(
        False, "--if-key",
        help="With --restore: an age backup and no identity here (a database host holds "
             "only the public key) gets the file checks alone and a line saying so, "
             "instead of an error. The scheduled drill passes it."),
    repo: str | None = RepoOpt,
    json_out: JsonOpt = False,
) -> None:
    """Re-hash every file against the manifest (and with --restore, prove it restores).

    The restore needs a writable server: on a cluster's replica it is skipped (exit 0)
    and the leader's run of the same job does it. It needs the backup's key too: an age
    backup needs --identity (or BACKUP_AGE_IDENTITY_FILE).
    """
    settings = load_settings(backup_repo_dir=repo, backup_age_identity_file=_path(identity))
    if with_restore:
        # As the backup role: the backup jobs' user holds no other role's password.
        leader_only(settings, "backup verify", json=json_out, kind="backup")
    try:
        backup = _local_or_download(settings, backup_id, json_out,
                                    allow_unsigned=allow_unsigned)
    except BackupNotFound:
        if settings.patroni_config is None or settings.s3_enabled:
            raise
        # The leader of a cluster without S3: its backups are on the backup member.
        skip_job("backup verify", "skipped: no backup on this member and no S3 to fetch "
                 "one from (set backup_s3 so the leader can check the cluster's backups)",
                 json_out, reason="no_backup_here")
    no_key = None
    if with_restore and if_key and _needs_identity(settings, backup):
        with_restore = False
        no_key = (f"restore skipped: backup {backup.backup_id} is encrypted with age and "
                  "this host has no identity (BACKUP_AGE_IDENTITY_FILE); files checked only")
    if json_out:
        result = verify.verify_backup(settings, backup, with_restore=with_restore,
                                      allow_unencrypted=allow_unencrypted)
        emit_json({**result.to_dict(), **({"restore_skipped": no_key} if no_key else {})})
    else:
        with console.status(f"verifying {backup.backup_id} ..."):
            result = verify.verify_backup(settings, backup, with_restore=with_restore,
                                          allow_unencrypted=allow_unencrypted)
        console.print(f"{backup.backup_id}: {result.files_checked} files, "
                      f"{_human(result.bytes_checked)} checked"
                      + (f"; restored in {result.restore_seconds} s" if result.restored else ""))
        if no_key:
            console.print(f"[yellow]{no_key}[/]", highlight=False)
    if not result.ok:
        raise BackupCorrupt(f"backup {backup.backup_id} failed verification: "
                            + "; ".join(result.problems[:3]))
    if not json_out:
        console.print("[green]ok[/]")


#: `backup drill` names the pgBackRest repository with --repo, like `backup physical`
#: and `backup pitr` beside it; the local repository is --repo-dir there.
RepoDirOpt = typer.Option(None, "--repo-dir",
                          help="Local repository (default: BACKUP_REPO_DIR).")


@app.command()
@logged("backup drill")
def drill(
    logical: bool = typer.Option(False, "--logical", help="Only the newest logical backup."),
    physical: bool = typer.Option(False, "--physical",
                                  help="Only the newest pgBackRest backups (needs it enabled)."),
    both: bool = typer.Option(False, "--both", help="Both kinds (the default); without "
                              "pgBackRest the physical drill is skipped with a reason."),
    pgbackrest_repo: int | None = typer.Option(
        None, "--repo", min=1, max=2,
        help="Physical drill of pgBackRest repository 1 (this host) or 2 (S3) only; "
             "default: every configured one, in turn."),
    if_key: bool = typer.Option(
        False, "--if-key",
        help="An age backup and no identity here: check its files only and say the "
             "restore was skipped, instead of an error. The scheduled drill passes it."),
    allow_unsigned: bool = UnsignedOpt,
    identity: str | None = IdentityOpt,
    repo_dir: str | None = RepoDirOpt,
    json_out: JsonOpt = False,
) -> None:
    """Restore the newest backups into throwaway copies and prove the data (exit 1 if not).

    Logical: row counts per table and per partition and a content checksum per table,
    against those taken in the backup's snapshot. Physical, per pgBackRest repository:
    a marker row written just before a target moment is restored by WAL replay. First
    removes what killed drills left behind. Reports RTO and RPO; the result goes to
    system_logs and to the metrics (docs/backup.md, Restore drills).
    """
    from donnadb.backup import drill as drills
    from donnadb.backup import drillclean
    from donnadb.cli import drill_view

    if logical + physical + both > 1:
        raise UsageError("choose one of --logical, --physical and --both")
    if logical and pgbackrest_repo is not None:
        raise UsageError("--repo names the pgBackRest repository of the physical drill; "
                         "drop --logical")
    settings = load_settings(backup_repo_dir=repo_dir, backup_age_identity_file=_path(identity))
    if physical and not settings.pgbackrest_enabled:
        raise UsageError("--physical needs pgBackRest, which is not enabled here: set "
                         "pgbackrest_enabled in group_data and run `make deploy`, or use "
                         "--logical")
    if pgbackrest_repo is not None:
        if not settings.pgbackrest_enabled:
            raise UsageError("--repo needs pgBackRest, which is not enabled here")
        drills.drill_repos(settings, pgbackrest_repo)  # an unknown one: before any work
    # Restores need a writable server and markers go to the live database: the leader's.
    leader_only(settings, "backup drill", json=json_out, kind="backup")
    results = []
    with drillclean.session(settings) as leftovers:
        if not physical:
            results.append(_logical_drill(settings, drills, if_key=if_key, json_out=json_out,
                                          allow_unsigned=allow_unsigned))
        if not logical:
            results += _physical_drills(settings, drills, pgbackrest_repo, json_out=json_out)
    drills.record(settings, results)
    failed = [r for r in results if not r.ok]
    if json_out:
        emit_json({"ok": not failed, "results": [r.to_dict() for r in results],
                   "leftovers": None if leftovers is None
                   else [item.to_dict() for item in leftovers]})
    else:
        drill_view.render(results, leftovers)
    if failed:
        first = failed[0]
        raise DrillFailed(f"{drill_view.name(first)} drill of "
                          f"{first.backup_id or 'the newest backup'} failed: {first.problems[0]}")


def _physical_drills(settings: Settings, drills, repo: int | None, *, json_out: bool):
    if not settings.pgbackrest_enabled:
        return [drills.DrillResult("physical", True, skipped="skipped: pgBackRest is not "
                                   "enabled (group_data pgbackrest_enabled)")]
    busy = nullcontext() if json_out else console.status(
        "physical drill: marker rows, WAL archive, restore to a moment ...")
    with busy:
        return drills.physical_drills(settings, repo=repo)


def _logical_drill(settings: Settings, drills, *, if_key: bool, json_out: bool,
                   allow_unsigned: bool):
    """The newest good logical backup (local, else S3) drilled; with ``if_key`` and no
    age identity here, its files are checked and the restore reported skipped."""
    try:
        backup = _local_or_download(settings, "latest", json_out,
                                    allow_unsigned=allow_unsigned)
    except BackupNotFound:
        if settings.patroni_config is None or settings.s3_enabled:
            raise
        return drills.DrillResult("logical", True, skipped="skipped: no backup on this "
                                  "member and no S3 to fetch one from")
    if if_key and _needs_identity(settings, backup):
        checked = verify.verify_backup(settings, backup)
        result = drills.DrillResult(
            "logical", checked.ok, backup_id=backup.backup_id, problems=checked.problems,
            skipped=f"restore skipped: backup {backup.backup_id} is encrypted with age and "
                    "this host has no identity (BACKUP_AGE_IDENTITY_FILE); files checked "
                    + ("and intact" if checked.ok else "and DAMAGED"))
        return result
    busy = nullcontext() if json_out else console.status(
        f"logical drill: restoring {backup.backup_id} into a throwaway database ...")
    with busy:
        return drills.logical_drill(settings, backup)


def _needs_identity(settings: Settings, backup: storage_local.LocalBackup) -> bool:
    """``backup`` is encrypted with age and no identity is configured."""
    encryption = backup.manifest.encryption if backup.manifest else None
    return bool(encryption and encryption.get("algorithm") == agecrypt.ALGORITHM
                and settings.backup_age_identity_file is None)


@app.command(name="restore")
@logged("backup restore")
def restore_(
    backup_id: str | None = typer.Argument(None, help="Backup id or 'latest' (local, else S3)."),
    target_db: str | None = typer.Option(None, "--target-db",
                                         help="Database to restore into (with --cleanup: "
                                              "whose copies to drop; default DB_NAME)."),
    force: bool = typer.Option(False, "--force",
                               help="Replace a non-empty target (it is kept as "
                                    "<target>_before_<stamp>)."),
    cleanup: bool = typer.Option(False, "--cleanup",
                                 help="Drop the kept <target>_before_* copies, the "
                                      "<target>_restoring_* leftovers of killed restores "
                                      "and those of killed drills (donna_drill_*)."),
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    jobs: int | None = JobsOpt,
    allow_unencrypted: bool = UnencryptedOpt,
    allow_unsigned: bool = UnsignedOpt,
    identity: str | None = IdentityOpt,
    repo: str | None = RepoOpt,
    json_out: JsonOpt = False,
) -> None:
    """Restore a backup into a new database, check it, then swap it in as --target-db.

    Refuses a non-empty target without --force, and with --force asks before replacing
    it unless --yes; --dry-run says what it would do. --cleanup drops the kept copies.
    """
    settings = load_settings(backup_repo_dir=repo, backup_age_identity_file=_path(identity))
    if cleanup:
        if backup_id is not None:
            raise UsageError("--cleanup takes no backup id; use --target-db to choose whose "
                             "copies to drop")
        _cleanup(settings, target_db or settings.db_name, dry_run=dry_run, yes=yes,
                 json_out=json_out)
        return
    if backup_id is None or target_db is None:
        raise UsageError("backup restore needs a backup id and --target-db "
                         "(or --cleanup)")
    if dry_run:
        _restore_plan(settings, backup_id, target_db, force=force, json_out=json_out)
        return
    if force and not yes and restore.target_has_data(settings, target_db):
        confirm(f"Replace {target_db} with backup {backup_id}? The current {target_db} is kept "
                f"as {swap.kept_name(target_db, '<stamp>')}", yes)
    backup = _local_or_download(settings, backup_id, json_out, allow_unsigned=allow_unsigned)
    options = {"force": force, "jobs": jobs, "allow_unencrypted": allow_unencrypted}
    if json_out:
        result = restore.restore_backup(settings, backup, target_db, **options)
        emit_json({"backup_id": result.backup_id, "target_db": result.target_db,
                   "seconds": result.seconds, "schema_version": result.schema_version,
                   "row_counts": result.row_counts, "phases": result.phases,
                   "kept_as": result.kept_as, "erasures": result.erasures.to_dict()})
        return
    with console.status(f"restoring {backup.backup_id} into a new copy of {target_db} ..."):
        result = restore.restore_backup(settings, backup, target_db, **options)
    console.print(f"restored {result.backup_id} into [bold]{target_db}[/] in "
                  f"{result.seconds} s: schema {result.schema_version or 'none'}, "
                  f"{sum(result.row_counts.values())} rows in {len(result.row_counts)} "
                  "tables, all matching the manifest")
    console.print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in result.phases.items()))
    _print_erasures(result.erasures)
    if result.kept_as:
        console.print(f"  the previous {target_db} is kept as [bold]{result.kept_as}[/]; "
                      "`donnactl backup restore --cleanup` drops it")


def _print_erasures(done: erasures.Reapplied) -> None:
    if done.note:
        console.print(f"  [yellow]{escape(done.note)}[/]", highlight=False)
    else:
        console.print(f"  erased again: {len(done.erased_again)} (the erasures ledger of "
                      f"{' and '.join(done.ledger_from)}: {done.ledger_entries} entries)",
                      highlight=False)
    for warning in done.warnings:
        console.print(f"  [yellow]{escape(warning)}[/]", highlight=False)


def _restore_plan(settings: Settings, backup_id: str, target_db: str, *, force: bool,
                  json_out: bool) -> None:
    """What `restore` would do, read only: which backup from where, the target's fate and
    whom the erasures ledgers would erase again."""
    manifest = None
    try:
        local = storage_local.resolve(settings.backup_repo_dir, backup_id)
        resolved, source, manifest = local.backup_id, "local", local.manifest
    except BackupNotFound:
        if not settings.s3_enabled:
            raise
        # The manifest names the source database, whose ledger (and its copy) counts too.
        remote = _remote(S3Store(settings), backup_id)
        if remote is None or not remote.good:
            raise BackupNotFound(f"no good backup {backup_id!r} locally or in S3; `donnactl "
                                 "backup list` shows them") from None
        resolved, source, manifest = remote.backup_id, "s3", remote.manifest
    plan = erasures.restore_plan(settings, target_db, manifest)
    has_data = restore.target_has_data(settings, target_db)
    if not has_data:
        action = f"restore {resolved} ({source}) into a new database and name it {target_db}"
    elif force:
        action = (f"restore {resolved} ({source}) into a new database, then replace "
                  f"{target_db} (kept as {swap.kept_name(target_db, '<stamp>')})")
    else:
        action = f"refuse: {target_db} holds data (--force replaces it)"
    if json_out:
        emit_json({"dry_run": True, "backup_id": resolved, "source": source,
                   "target_db": target_db, "target_has_data": has_data, "action": action,
                   "erasures": plan})
    else:
        console.print(f"dry run: would {action}", highlight=False)
        console.print(f"  {_plan_line(plan)}", highlight=False)
        for warning in plan["warnings"]:
            console.print(f"  [yellow]{escape(warning)}[/]", highlight=False)


def _plan_line(plan: dict) -> str:
    if plan["note"]:
        return plan["note"]
    return (f"would erase again {plan['erased_again']} users erased since the backup (the "
            f"erasures ledger of {' and '.join(plan['ledger_from'])}: "
            f"{plan['ledger_entries']} entries)")


def _cleanup(settings: Settings, target_db: str, *, dry_run: bool, yes: bool,
             json_out: bool) -> None:
    from donnadb.backup import drillclean

    if not restore.DBNAME_RE.match(target_db):
        raise UsageError(f"--target-db {target_db!r} is not a plain database name")
    # Resuming deletes nothing, so it needs no question (and a "no" must not block it).
    resumed = False if dry_run else swap.resume_if_left_paused(settings, target_db)
    found = swap.leftovers(settings, target_db)
    doomed = [f for f in found if not f.in_use]
    # A drill's copies are anybody's leftovers only while no drill runs.
    with drillclean.removing(settings) as drill_found:
        drill_doomed = [d for d in (drill_found or ()) if d.kept_because is None]
    names = [f.name for f in doomed] + [d.name for d in drill_doomed]
    if names and not dry_run:
        confirm(f"Drop {len(names)} database(s) or drill copies left by restores of "
                f"{target_db} and by restore drills: " + ", ".join(names) + "?", yes)
    dropped = [] if dry_run else swap.drop_leftovers(settings, target_db, doomed)
    if drill_doomed and not dry_run:
        drill_found = drillclean.remove_named(settings, {d.name for d in drill_doomed})
    if json_out:
        emit_json({"target_db": target_db, "dry_run": dry_run,
                   "found": [f.to_dict() for f in found], "dropped": dropped,
                   "pgbouncer_resumed": resumed,
                   "drill_leftovers": _dicts(drill_found)})
        return
    verb = "would drop" if dry_run else "dropped"
    _print_restore_leftovers(target_db, found, resumed, verb)
    _print_drill_leftovers(drill_found, verb)


def _dicts(found: list | None) -> list[dict] | None:
    """None (a drill is running: nothing was looked at) stays None."""
    return None if found is None else [d.to_dict() for d in found]


def _print_restore_leftovers(target_db: str, found: list, resumed: bool, verb: str) -> None:
    if resumed:
        console.print(f"{target_db} was left paused on PgBouncer (a killed restore): resumed")
    if not found:
        console.print(f"no copies left by restores of {target_db}")
    for f in found:
        what = ("the database it replaced" if f.kind == "kept"
                else "left by a killed restore")
        state = ("[yellow]in use by a running restore, kept[/]" if f.in_use
                 else f"[yellow]{verb}[/]")
        console.print(f"{f.name} ({what}): {state}")


def _print_drill_leftovers(found: list | None, verb: str) -> None:
    if found is None:
        console.print("[yellow]a restore drill is running: its copies are not touched[/]")
    for d in found or ():
        state = (f"[yellow]kept[/] ({d.kept_because})" if d.kept_because
                 else f"[yellow]{'dropped' if d.removed else verb}[/]")
        console.print(f"{d.name} ({d.kind} left by a killed restore drill): {state}",
                      highlight=False)


@app.command()
@logged("backup upload")
def upload(backup_id: str = typer.Argument(..., help="Backup id or 'latest'."),
           repo: str | None = RepoOpt, json_out: JsonOpt = False) -> None:
    """Copy a local backup to S3 (manifest last)."""
    settings = load_settings(backup_repo_dir=repo)
    backup = storage_local.resolve(settings.backup_repo_dir, backup_id)
    store = S3Store(settings)
    sent = store.upload_backup(backup)
    if json_out:
        emit_json({"backup_id": backup.backup_id, "bytes": sent})
    else:
        console.print(f"uploaded {backup.backup_id} ({_human(sent)}) to "
                      f"s3://{store.bucket}/{store.prefix}")


@app.command()
@logged("backup prune")
def prune(
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    repo: str | None = RepoOpt,
    json_out: JsonOpt = False,
) -> None:
    """Apply the retention policy (BACKUP_KEEP_*) locally and in S3.

    Asks before deleting unless --yes (the timer passes it); --dry-run lists what would go.
    """
    settings = load_settings(backup_repo_dir=repo)
    if not dry_run and not yes:
        plan = run_prune(settings, dry_run=True)
        doomed = [f"{where} {backup_id}"
                  for where, part in (("local", plan.local), ("s3", plan.s3)) if part
                  for backup_id in part.delete
                  if not (where == "local" and backup_id in plan.in_use)]
        if doomed:
            confirm(f"Delete {len(doomed)} backup(s): {', '.join(doomed)}?", yes)
    report = run_prune(settings, dry_run=dry_run)
    if json_out:
        emit_json(report.to_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    for where, plan in (("local", report.local), ("s3", report.s3)):
        if plan is None:
            continue
        for backup_id, reasons in sorted(plan.keep.items()):
            console.print(f"{where}: keep {backup_id} ({', '.join(reasons)})")
        for backup_id in plan.delete:
            if where == "local" and backup_id in report.in_use:
                continue
            console.print(f"{where}: [yellow]{verb}[/] {backup_id}")
    for backup_id in report.in_use:
        console.print(f"local: [yellow]kept[/] {backup_id} (a restore or verify is reading it)")
    for name in report.partials_removed:
        console.print(f"local: removed unfinished {name}")
    for up in report.uploads_aborted:
        console.print(f"s3: aborted unfinished upload of {up['key']}")


@app.command()
def check(repo: str | None = RepoOpt, if_backup_member: bool = BackupMemberOpt,
          physical_verify: bool = typer.Option(
              False, "--physical-verify",
              help="Also run `pgbackrest verify` on every repository (reads them all)."),
          json_out: JsonOpt = False) -> None:
    """Exit 8 when a newest good backup is too old or missing, or pgBackRest's check fails.

    With S3, also when erasures are not copied to the bucket. The limit is
    BACKUP_MAX_AGE_HOURS, for the logical backups and (with pgBackRest) for each
    repository's newest physical backup."""
    settings = load_settings(backup_repo_dir=repo)
    if if_backup_member:
        backup_member_only(settings, "backup check", json=json_out)
    engine = None
    if settings.pgbackrest_enabled:
        engine = pitr.check(pitr.engine_from_settings(settings), verify=physical_verify)
        if engine.get("ok"):
            pitr.save_state(settings.backup_repo_dir, engine)
    elif physical_verify:
        raise UsageError("--physical-verify needs pgBackRest (PGBACKREST_ENABLED)")
    report = check_backups(settings, engine=engine)
    if json_out:
        emit_json(report.to_dict())
    else:
        _print_check(report, settings)
    if not report.ok:
        raise BackupStale(report.problems[0])
    if not json_out:
        console.print(f"[green]ok[/]: within {report.max_age_hours:g} h")


def _print_check(report, settings: Settings) -> None:
    for where in ("local", "s3"):
        newest = getattr(report, f"newest_{where}")
        if where == "s3" and not settings.s3_enabled:
            continue
        age = getattr(report, f"newest_{where}_age_hours")
        console.print(f"{where}: newest good backup {newest or 'none'}"
                      + (f", {age:.2f} h old" if age is not None else ""))
    for up in report.unfinished_uploads:
        console.print(f"s3: unfinished multipart upload {up['key']} since {up['initiated']}")
    if report.engine and report.engine.get("ok"):
        e = report.engine
        for number, seen in sorted(e["repos"].items()):
            console.print(f"pgBackRest repo{number}: {seen['backups']} backups, newest "
                          f"{seen['newest_backup'] or 'none'}"
                          + (f" ({seen['newest_backup_age_hours']} h old)"
                             if seen["newest_backup"] else "")
                          + (", verified" if number in e.get("verified", {}) else ""))
        console.print(f"pgBackRest: WAL archived up to {e['wal_max']}")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")


RepoNumberOpt = typer.Option(None, "--repo", min=1, max=2,
                             help="pgBackRest repository: 1 (this host) or 2 (S3); "
                                  "default: every configured one.")


@app.command()
@logged("backup physical")
def physical(
    kind: str = typer.Option("full", "--type", help="full, diff or incr."),
    repo: int | None = RepoNumberOpt,
    if_backup_member: bool = BackupMemberOpt,
    json_out: JsonOpt = False,
) -> None:
    """Take a pgBackRest physical backup (the base for point-in-time recovery).

    On a cluster's replica pgBackRest copies the replica's own files."""
    settings = load_settings()
    if if_backup_member:
        backup_member_only(settings, "backup physical", json=json_out)
    engine = pitr.engine_from_settings(settings)
    with console.status(f"pgbackrest {kind} backup ...") if not json_out else nullcontext():
        taken = pitr.physical_backup(engine, kind, repo)
    # What monitoring reads: pgBackRest's info alone (`check` would switch WAL again).
    pitr.save_state(settings.backup_repo_dir, pitr.overview(engine, pitr.stanza_info(engine)))
    if json_out:
        emit_json({"backups": taken})
        return
    for info in taken:
        console.print(f"pgBackRest {info.get('type')} backup {info.get('label')} done in "
                      f"repo{info['database']['repo-key']}")


def recovery_target(to: str | None, lsn: str | None, xid: str | None) -> pitr.Target:
    """The one target given as --to, --lsn or --xid.

    :raises UsageError: none or several given, or a time without a zone.
    """
    given = [name for name, value in (("--to", to), ("--lsn", lsn), ("--xid", xid)) if value]
    if len(given) != 1:
        raise UsageError("give exactly one of --to TIME, --lsn LSN or --xid XID")
    if lsn:
        return pitr.Target.at_lsn(lsn)
    if xid:
        return pitr.Target.at_xid(xid)
    try:
        return pitr.Target.at_time(datetime.fromisoformat(to))
    except ValueError:
        raise UsageError(f"--to {to!r} is not a time; use '2026-11-25 10:00:00+00'") from None


@app.command(name="pitr")
@logged("backup pitr")
def pitr_(
    to: str | None = typer.Option(None, "--to",
                                  help="Target moment with zone: '2026-11-25 10:00:00+00'."),
    lsn: str | None = typer.Option(None, "--lsn", help="Target WAL location, e.g. 0/3000060."),
    xid: str | None = typer.Option(None, "--xid",
                                   help="Target transaction id (restored up to its commit)."),
    repo: int | None = typer.Option(None, "--repo", min=1, max=2,
                                    help="Restore from repository 1 (this host) or 2 (S3); "
                                         "default: pgBackRest's choice."),
    data_dir: str | None = typer.Option(None, "--data-dir",
                                        help="Empty directory for the restored copy."),
    port: int | None = typer.Option(None, "--port", help="Port for the restored copy."),
    in_place: bool = typer.Option(False, "--in-place",
                                  help="Replace the cluster itself (needs --force)."),
    force: bool = typer.Option(False, "--force", help="Allow --in-place."),
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore the cluster up to --to, --lsn or --xid (a new copy by default) and check it.

    --in-place replaces the running cluster: it needs --force and asks unless --yes.
    """
    target = recovery_target(to, lsn, xid)
    if in_place and not force:
        raise UsageError("--in-place replaces the running cluster; add --force to confirm")
    settings = load_settings()
    engine = pitr.engine_from_settings(settings)
    where = ("in place of the running cluster (its data directory kept as "
             "<dir>.before-pitr-<time>)" if in_place
             else f"into {data_dir or 'a new data directory'} on port {port or 'a free port'}")
    source = f"repo{repo}" if repo else "the first repository that has it"
    if dry_run:
        if json_out:
            emit_json({"dry_run": True, "target": str(target), "repo": repo,
                       "in_place": in_place, "data_dir": data_dir, "port": port})
        else:
            console.print(f"dry run: would restore the cluster up to {target} from {source} "
                          f"{where}", highlight=False)
            console.print("  then erase again the users the erasures ledger of "
                          f"{settings.db_name} lists" if in_place else
                          "  and print the command that erases again, in what you load "
                          f"from it, the users the erasures ledger of {settings.db_name} "
                          "lists", highlight=False)
        return
    if in_place:
        confirm(f"Stop the cluster and restore it up to {target} from {source} {where}?", yes)
    result, reapplied = erasures.restore_cluster(
        settings, engine, target, repo=repo, data_dir=Path(data_dir) if data_dir else None,
        port=port, in_place=in_place)
    if json_out:
        emit_json({**result.to_dict(), "erasures": reapplied.to_dict()})
        return
    console.print(f"restored up to {result.target} in {result.seconds} s: "
                  f"{result.data_dir} on port {result.port} (server time {result.server_now})",
                  highlight=False)
    _print_erasures(reapplied)


@app.command()
@logged("backup keygen")
def keygen(path: str = typer.Argument(..., help="New key file (0600); keep a copy "
                                       "outside the backups, e.g. in your password manager."),
           for_signing: bool = typer.Option(False, "--signing",
                                            help="A manifest signing key "
                                                 "(BACKUP_SIGNING_KEY_FILE) instead."),
           for_age: bool = typer.Option(False, "--age",
                                        help="An age key pair instead: the private key in "
                                             "PATH (on the operator's machine, not the "
                                             "database host); prints the public key."),
           json_out: JsonOpt = False) -> None:
    """Create a key file: client-side encryption (default), manifest signing, or age."""
    if for_age:
        if for_signing:
            raise UsageError("--age and --signing make different keys; choose one")
        public = agecrypt.generate_identity(Path(path))
        if json_out:
            emit_json({"path": str(path), "public_key": public,
                       "variable": "BACKUP_AGE_IDENTITY_FILE"})
            return
        console.print(f"wrote {path} (public key {public}); put the public key in group_data "
                      "backup_age_recipients, keep the file off the database host and "
                      "escrow a copy: restores need it (--identity)", highlight=False)
        return
    key = crypto.generate_key_file(Path(path))
    variable = "BACKUP_SIGNING_KEY_FILE" if for_signing else "BACKUP_ENCRYPTION_KEY_FILE"
    if json_out:
        emit_json({"path": str(path), "key_id": key.key_id, "variable": variable})
        return
    console.print(f"wrote {path} (key id {key.key_id}); set {variable}={path} "
                  "and store a copy of the file away from the backups")
