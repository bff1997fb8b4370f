"""`donnactl keys init|add-kek|seal|escrow|status|rotate|retire|seal-existing|
reapply-erasures`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from donnadb.cli.opsrun import confirm, logged, settings
from donnadb.cli.options import DbOpt, DryRunOpt, JsonOpt, YesOpt
from donnadb.cli.output import console, emit, emit_json
from donnadb.crypto import keyfile, kms, rotation
from donnadb.dal import cache, sealed
from donnadb.errors import ConfigError
from donnadb.ops import users

app = typer.Typer(no_args_is_help=True)


def _key_file():
    s = settings()
    if s.crypto_kek_file is None:
        raise ConfigError("CRYPTO_KEK_FILE is not set: name the key file there")
    return s, s.crypto_kek_file


@app.command("init")
@logged("keys init")
def init_cmd(json: JsonOpt = False) -> None:
    """Make the key file CRYPTO_KEK_FILE (0600): a KEK and the e-mail lookup key.

    Sealed by CRYPTO_KMS_KEY_ID when it is set. Never overwrites a file. Keep a copy in
    escrow: without it nothing sealed can be read.
    """
    s, path = _key_file()
    keys = keyfile.generate(path, kms.seal_of(s))
    if json:
        emit_json({"key_file": str(path), "kek_id": keys.current.kek_id})
    else:
        console.print(f"wrote {path} (KEK {keys.current.kek_id}); copy it to your escrow",
                      highlight=False)


@app.command("add-kek")
@logged("keys add-kek")
def add_kek_cmd(json: JsonOpt = False, yes: YesOpt = False) -> None:
    """Put a new KEK on top of the key file; the old ones stay to unwrap.

    Then restart the application and run `keys rotate`.
    """
    s, path = _key_file()
    confirm(f"Add a new KEK to {path}?", yes)
    kek = keyfile.add_kek(path, kms.seal_of(s))
    if json:
        emit_json({"key_file": str(path), "kek_id": kek.kek_id})
    else:
        console.print(f"added KEK {kek.kek_id} to {path}: copy the file to your escrow, "
                      "restart the application, then `donnactl keys rotate`", highlight=False)


@app.command("seal")
@logged("keys seal")
def seal_cmd(dry_run: DryRunOpt = False, yes: YesOpt = False, json: JsonOpt = False) -> None:
    """Write the key file again sealed by the KMS key CRYPTO_KMS_KEY_ID.

    A file in clear, or one sealed by another KMS key (opened with that key), gets the
    same keys sealed; one sealed by this key already is left alone. Then escrow the new
    file and hand it to every host (the next deploy does).
    """
    s, path = _key_file()
    seal = kms.seal_of(s)
    if seal is None:
        raise ConfigError("CRYPTO_KMS_KEY_ID is not set: name the KMS key to seal the key "
                          "file with")
    before = keyfile.load(path, seal).sealed_by  # opens it, as the application would
    target = seal.arn()
    if dry_run or before == target:
        result = {"key_file": str(path), "sealed_by": before, "seal_with": target,
                  "changed": False, "dry_run": dry_run}
        line = (f"{path} is sealed by {target} already" if before == target else
                f"would seal {path} with {target} (now "
                f"{'sealed by ' + before if before else 'in clear'})")
    else:
        confirm(f"Replace {path} with a copy sealed by {target}?", yes)
        before, target = keyfile.seal_with(path, seal)
        result = {"key_file": str(path), "sealed_by": target, "was_sealed_by": before,
                  "changed": True, "dry_run": False}
        line = (f"sealed {path} with {target}: copy it to your escrow and deploy, so every "
                "host gets it")
    emit(result, line, json)


@app.command("escrow")
@logged("keys escrow")
def escrow_cmd(out: Annotated[Path, typer.Argument(help="A new file for the copy (0600).")],
               dry_run: DryRunOpt = False, yes: YesOpt = False,
               json: JsonOpt = False) -> None:
    """Write the key file's keys in clear to OUT, a new 0600 file, for your escrow.

    Sealed by KMS, the key file opens only with its KMS key: this copy opens the data
    without it (a KMS key deleted or out of reach). Keep it offline, away from the
    backups; never on a host. Never overwrites a file.
    """
    s, path = _key_file()
    keys = keyfile.load(path, kms.seal_of(s))  # opened first: a dry run proves it opens
    result = {"key_file": str(path), "out": str(out), "sealed_by": keys.sealed_by,
              "kek_ids": [k.kek_id for k in keys.keks], "dry_run": dry_run}
    if dry_run:
        line = f"would write the {len(keys.keks)} KEK(s) of {path} in clear to {out}"
    else:
        confirm(f"Write the keys of {path} in clear to {out}? Whoever reads it can read "
                "every sealed value", yes)
        keyfile.write_clear_copy(keys, out)
        line = (f"wrote the {len(keys.keks)} KEK(s) of {path} in clear to {out} (0600): "
                "move it to your escrow, offline, and remove it here")
    emit(result, line, json)


@app.command("status")
@logged("keys status")
def status_cmd(json: JsonOpt = False, dbname: DbOpt = None) -> None:
    """The key file's KEKs, their data keys, and the users with personal values in clear.

    `keys seal-existing` seals the values in clear.

    Exit 1 when a data key's KEK is missing from the key file.
    """
    s = settings()
    result = rotation.status(s, dbname=dbname)
    result["users_in_clear"] = sealed.count_plain_users(s, dbname=dbname)
    result["kms_key_id"] = s.crypto_kms_key_id
    if json:
        emit_json(result)
    else:
        table = Table(title="key encryption keys", title_justify="left")
        for col in ("kek id", "current", "data keys"):
            table.add_column(col)
        for k in result["key_file"]:
            table.add_row(k["kek_id"], "yes" if k["current"] else "", str(k["data_keys"]))
        console.print(table)
        console.print(f"key file sealed by {result['sealed_by'] or 'nothing (in clear)'}",
                      highlight=False)
        if s.crypto_kms_key_id and not result["sealed_by"]:
            console.print("[yellow]CRYPTO_KMS_KEY_ID is set but the key file is in clear:[/] "
                          "run `donnactl keys seal`")
        console.print(f"{result['to_rewrap']} data keys to re-wrap", highlight=False)
        console.print(f"{result['users_in_clear']} users with personal values in clear",
                      highlight=False)
        if result["missing"]:
            console.print("[red]missing from the key file:[/] " + ", ".join(result["missing"]))
    if result["missing"]:
        raise typer.Exit(1)


@app.command("rotate")
@logged("keys rotate")
def rotate_cmd(
    batch: Annotated[int, typer.Option(min=1, help="Data keys per transaction.")] =
    rotation.DEFAULT_BATCH,
    json: JsonOpt = False,
    dbname: DbOpt = None,
) -> None:
    """Re-wrap every data key under the current KEK, online, a batch per transaction.

    Run it again after an interruption. No sealed value is rewritten.
    """
    result = rotation.rotate(settings(), dbname=dbname, batch=batch)
    if json:
        emit_json(result)
    else:
        console.print(f"re-wrapped {result['rewrapped']} data keys under KEK "
                      f"{result['current']}; {result['left']} left", highlight=False)
    if result["left"]:
        raise typer.Exit(1)


@app.command("retire")
@logged("keys retire")
def retire_cmd(kek_id: Annotated[str, typer.Argument(help="The old KEK's id.")],
               yes: YesOpt = False, json: JsonOpt = False, dbname: DbOpt = None) -> None:
    """Remove an old KEK from the key file once no data key needs it.

    Backups taken before the rotation need it: keep it in escrow as long as they are kept.
    """
    s, path = _key_file()
    confirm(f"Remove KEK {kek_id} from {path}?", yes)
    rotation.retire(s, kek_id, dbname=dbname)
    if json:
        emit_json({"key_file": str(path), "retired": kek_id})
    else:
        console.print(f"removed KEK {kek_id} from {path}", highlight=False)


@app.command("seal-existing")
@logged("keys seal-existing")
def seal_existing_cmd(
    batch: Annotated[int, typer.Option(min=1, help="Users per transaction.")] = 200,
    json: JsonOpt = False,
    dbname: DbOpt = None,
) -> None:
    """Seal the personal values stored in clear (written with encryption off).

    Run it once after turning CRYPTO_ENABLED on over existing data (the legacy import),
    and again after an interruption. Cached copies of the users changed are dropped.
    """
    s = settings()
    db_name = dbname or s.db_name
    changed = sealed.seal_plain_rows(
        s, dbname=db_name, batch=batch,
        sealed=lambda ids: cache.forget(s, db_name, [("user", i) for i in ids]))
    if json:
        emit_json({"users_sealed": changed})
    else:
        console.print(f"sealed the personal values of {changed} users", highlight=False)


@app.command("reapply-erasures")
@logged("keys reapply-erasures")
def reapply_cmd(
    ledger_db: Annotated[str, typer.Option("--ledger-db", help=(
        "The database whose erasures ledger to apply (the one the restore replaced)."))],
    json: JsonOpt = False,
    dbname: DbOpt = None,
) -> None:
    """Erase again, in a restored database, every user the erasures ledger names.

    Their rows and data key go, as `users forget` does; running it again changes nothing.
    """
    s = settings()
    result = users.reapply_erasures(s, ledger_db=ledger_db, dbname=dbname or s.db_name)
    if json:
        emit_json(result)
    else:
        console.print(f"{len(result['erased_again'])} of {result['ledger']} erasures applied "
                      "again", highlight=False)
