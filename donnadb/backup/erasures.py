"""Erasures applied again to restored data, so that no restore brings a forgotten user back.

A backup taken before `users forget` holds the user's rows *and* their wrapped data key,
which the KEK still opens. The live database's append-only ``erasures`` ledger says who
must go again (donnadb/ops/users.py erases them as `users forget` does):

- ``backup restore`` reads the ledgers of the databases its copy stands for (the one it
  replaces, and the backup's source database when it exists on this server) after the
  copy is checked and before it is swapped in, and erases those users in the copy: the
  target's name never points at a database that holds them (one forgotten during the
  swap is in the replaced database's ledger after it, and erased then);
- ``backup pitr --in-place`` reads the ledger before it stops the cluster (afterwards
  only the restored, older ledger is left) and applies it once the cluster is up again;
- a PITR copy beside the cluster (socket only, its own port) is not written to: the
  result says which command to run on whatever is loaded from it.

With S3 configured, each database's ledger also has a copy in the bucket
(donnadb/backup/ledgercopy.py), read beside the live one: a restore after losing the
host erases again whoever was forgotten up to the last copy. An entry there that fails
authentication is not applied, and the result names it. S3 unreachable is a warning,
not a stop: the live ledgers, when there are any, were read.

When no ledger can be read (the host was lost with the database, and no copy in S3) the
restore goes on and its result says so in one line: the ledger since the backup exists
nowhere here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from donnadb.backup import bootstrap, ledgercopy, pitr
from donnadb.backup.errors import BackupError
from donnadb.backup.manifest import Manifest
from donnadb.config import Settings
from donnadb.errors import DonnaError
from donnadb.ops import users

audit = logging.getLogger("donnadb.audit")

REAPPLY_COMMAND = "donnactl keys reapply-erasures --ledger-db {ledger} --dbname {dbname}"


@dataclass
class Ledger:
    """Erasures merged from the ledgers of ``read_from`` (each user once, earliest time)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    read_from: list[str] = field(default_factory=list)
    #: What could not be read or was refused (S3 unreachable, a forged entry): one line each.
    warnings: list[str] = field(default_factory=list)

    def since(self, moment: datetime) -> int:
        """How many erasures are later than ``moment`` (a backup's start)."""
        return sum(1 for e in self.entries if e["erased_at"] > moment)


@dataclass
class Reapplied:
    """What a restore did about erasures: for its summary, ``--json`` and the audit line."""

    ledger_from: list[str]
    ledger_entries: int
    erased_again: list[str] = field(default_factory=list)
    #: Set when nothing was applied: why, and what the operator runs instead (one line).
    note: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: The users of the ledgers applied (a later pass applies only the others).
    applied: set[str] = field(default_factory=set, repr=False)

    def to_dict(self) -> dict[str, Any]:
        done = asdict(self)
        del done["applied"]
        return {**done, "erased_again": len(self.erased_again)}


def read_ledgers(settings: Settings, names: list[str]) -> Ledger:
    """The erasures listed by any of the databases ``names`` that exist on this server
    and have a ledger (a database that does not, or has no ledger table, is skipped).

    :raises BackupError: an existing database's ledger cannot be read (a restore must
        not go on as if nobody had been erased).
    :raises DatabaseError: an existing database cannot be reached.
    """
    ledger, earliest = Ledger(), {}

    def merge(where: str, entries: list[dict[str, Any]]) -> None:
        ledger.read_from.append(where)
        for entry in entries:
            known = earliest.get(entry["id"])
            if known is None or entry["erased_at"] < known["erased_at"]:
                earliest[entry["id"]] = entry

    for name in dict.fromkeys(names):
        if not bootstrap.database_exists(name, port=settings.db_port):
            continue
        try:
            entries = users.read_ledger(settings, name)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BackupError(f"cannot read the erasures ledger of {name} ({first}); a "
                              "restore must not bring erased users back: give "
                              f"{settings.db_role_readonly} SELECT on it again (`make "
                              "deploy`) and restore again") from None
        if entries is not None:
            merge(name, entries)
    if settings.s3_enabled:
        for name in dict.fromkeys(names):
            try:
                copy = ledgercopy.pull(settings, name)
            except DonnaError as exc:
                ledger.warnings.append(f"the erasures ledger's copy in S3 was not read: {exc}")
                continue
            if copy.found:
                merge(copy.where, copy.entries)
            ledger.warnings.extend(f"{where} is not an authentic erasure of {name} (not "
                                   "signed with BACKUP_SIGNING_KEY_FILE, or altered): not "
                                   "applied; delete it if you did not write it"
                                   for where in copy.refused)
    ledger.entries = sorted(earliest.values(), key=lambda e: (e["erased_at"], e["id"]))
    return ledger


def no_ledger_note(names: list[str], dbname: str) -> str:
    """The one line a restore prints when none of ``names`` has a ledger here."""
    return (f"the erasures ledger since the backup cannot be read ({' and '.join(names)}: "
            "gone or without a ledger): run `"
            + REAPPLY_COMMAND.format(ledger="<a copy of the ledger>", dbname=dbname)
            + "` when you have one")


def restore_plan(settings: Settings, target_db: str,
                 manifest: Manifest | None) -> dict[str, Any]:
    """What a restore of ``manifest``'s backup into ``target_db`` would erase again, read
    only (``backup restore --dry-run``): the ledgers' erasures later than the backup's
    start (those before it are not in it); every entry without the manifest (in S3).
    """
    names = [target_db] + ([manifest.database] if manifest else [])
    ledger = read_ledgers(settings, names)
    if not ledger.read_from:
        return {"ledger_from": [], "ledger_entries": 0, "erased_again": 0,
                "note": no_ledger_note(names, target_db), "warnings": ledger.warnings}
    later = ledger.since(manifest.started) if manifest else len(ledger.entries)
    return {"ledger_from": ledger.read_from, "ledger_entries": len(ledger.entries),
            "erased_again": later, "note": None, "warnings": ledger.warnings}


def apply_to(settings: Settings, ledger: Ledger, dbname: str, *, serves_as: str,
             names: list[str]) -> Reapplied:
    """Erase again in ``dbname`` every user of ``ledger`` (or note why there is none),
    with an audit line. ``serves_as``: the name the data is (or will be) served under;
    ``names``: the databases whose ledgers were looked for.

    ``dbname`` is reached directly, not through PgBouncer: a restore's copy is not among
    PgBouncer's databases, and a paused one must not hold the erasure up.

    :raises DatabaseError: ``dbname`` cannot be reached.
    """
    if not ledger.read_from:
        done = Reapplied([], 0, note=no_ledger_note(names, serves_as),
                         warnings=ledger.warnings)
        audit.warning("restored without an erasures ledger",
                      extra={"audit": {"database": serves_as, "restored_copy": dbname,
                                       "looked_in": names, "warnings": ledger.warnings}})
        return done
    direct = settings.model_copy(update={"pgbouncer_port": None})
    erased = users.apply_ledger(direct, ledger.entries, dbname)
    audit.info("erasures applied again to restored data",
               extra={"audit": {"database": serves_as, "restored_copy": dbname,
                                "ledger_from": ledger.read_from,
                                "ledger_entries": len(ledger.entries),
                                "erased_again": len(erased), "warnings": ledger.warnings}})
    return Reapplied(ledger.read_from, len(ledger.entries), erased, warnings=ledger.warnings,
                     applied={e["id"] for e in ledger.entries})


def apply_late(settings: Settings, names: list[str], dbname: str, done: Reapplied) -> None:
    """After a swap: erase in ``dbname`` the users that the ledgers of ``names`` (the
    replaced database, the source) gained since ``done`` read them (a `users forget`
    that committed during the swap), and add them to ``done``.

    :raises BackupError: they cannot be read or applied (the restore itself is done).
    """
    try:
        ledger = read_ledgers(settings, names)
        late = [e for e in ledger.entries if e["id"] not in done.applied]
        if not late:
            return
        direct = settings.model_copy(update={"pgbouncer_port": None})
        erased = users.apply_ledger(direct, late, dbname)
    except DonnaError as exc:
        raise BackupError(
            f"{dbname} is restored, but erasures made during the restore are not applied "
            f"({exc}); run `{REAPPLY_COMMAND.format(ledger=names[0], dbname=dbname)}`"
        ) from None
    done.erased_again += erased
    done.ledger_entries += len(late)
    done.applied.update(e["id"] for e in late)
    audit.info("erasures made during a restore applied", extra={"audit": {
        "database": dbname, "ledger_from": ledger.read_from, "erased_again": len(erased)}})


def restore_cluster(settings: Settings, engine: pitr.Engine, target: pitr.Target,
                    **where: Any) -> tuple[pitr.PitrResult, Reapplied]:
    """:func:`pitr.restore_to` (``where``: its keyword arguments) and the erasures of
    ``DB_NAME``'s ledger: applied in place, or the command to run for a copy.

    :raises DatabaseError: the live ledger cannot be read (in place: before anything
        was stopped), or the restored database cannot be reached.
    :raises RestoreRefused, BackupError: as :func:`pitr.restore_to`.
    """
    names = [settings.db_name]
    if where.get("in_place"):
        # Read while the cluster still runs: once restored, only the older ledger is left.
        ledger = read_ledgers(settings, names)
        result = pitr.restore_to(engine, target, **where)
        return result, apply_to(settings, ledger, settings.db_name,
                                serves_as=settings.db_name, names=names)
    result = pitr.restore_to(engine, target, **where)
    ledger = read_ledgers(settings, names)
    # The copy listens on a socket only and serves nobody: it is left as restored, for
    # inspection; what is loaded from it into the cluster gets the erasures there.
    command = REAPPLY_COMMAND.format(ledger=settings.db_name,
                                     dbname="<the database you load it into>")
    note = (f"not applied to the copy on port {result.port}: it holds the users erased "
            f"after {target}; on whatever you load from it, run `{command}`")
    if not ledger.read_from:
        note = no_ledger_note(names, settings.db_name)
    return result, Reapplied(ledger.read_from, len(ledger.entries), note=note,
                             warnings=ledger.warnings)
