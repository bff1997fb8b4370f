#!/usr/bin/env python3
"""Secret files on the host (the cache's password, the field-encryption keys), run by
the deploy with the system python3.

    filecopies.py ensure --password-file P --acl-file A --user U --acl RULES [--check]
    filecopies.py share --from P --to T --owner U [--check]

``ensure`` (on the cache host): P holds a password (generated here when missing, 0600
root) and the ACL file A turns Redis's ``default`` user off and lets U in with that
password, given as its SHA-256 only, and RULES. ``share``: T holds P's content, owned
by U, 0600. With ``--check`` nothing is written; what would change is printed (nothing
printed: up to date). A secret never reaches argv, stdout or a log.
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import os
import pwd
import secrets
import sys
import tempfile


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _owned(path: str, uid: int, gid: int, mode: int) -> bool:
    st = os.stat(path)
    return st.st_uid == uid and st.st_gid == gid and (st.st_mode & 0o777) == mode


def _write(path: str, text: str, uid: int, gid: int, mode: int) -> None:
    """``text`` to ``path`` whole or not at all, private from the first byte."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".filecopies.")
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ensure(args: argparse.Namespace) -> list[str]:
    stale = []
    password = _read(args.password_file)
    if not password or not password.strip():
        stale.append(f"generate the password in {args.password_file}")
        if args.check:
            return stale + [f"write {args.acl_file}"]
        password = secrets.token_urlsafe(32) + "\n"
        _write(args.password_file, password, 0, 0, 0o600)
    elif not _owned(args.password_file, 0, 0, 0o600):
        stale.append(f"make {args.password_file} root-only (0600)")
        if not args.check:
            os.chown(args.password_file, 0, 0)
            os.chmod(args.password_file, 0o600)
    digest = hashlib.sha256(password.splitlines()[0].encode()).hexdigest()
    acl = f"user default off\nuser {args.user} on #{digest} {args.acl}\n"
    gid = grp.getgrnam(args.acl_group).gr_gid
    if _read(args.acl_file) != acl or not _owned(args.acl_file, 0, gid, 0o640):
        stale.append(f"write {args.acl_file}")
        if not args.check:
            _write(args.acl_file, acl, 0, gid, 0o640)
    return stale


def share(args: argparse.Namespace) -> list[str]:
    secret = _read(args.source)
    if not secret:
        raise SystemExit(f"filecopies: {args.source} is missing or empty; deploy the "
                         "host that makes it first")
    user = pwd.getpwnam(args.owner)
    if _read(args.to) == secret and _owned(args.to, user.pw_uid, user.pw_gid, 0o600):
        return []
    if not args.check:
        _write(args.to, secret, user.pw_uid, user.pw_gid, 0o600)
    return [f"write {args.to} ({args.owner}, 0600)"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="filecopies.py")
    modes = parser.add_subparsers(dest="mode", required=True)
    one = modes.add_parser("ensure")
    one.add_argument("--password-file", required=True)
    one.add_argument("--acl-file", required=True)
    one.add_argument("--acl-group", default="redis")
    one.add_argument("--user", required=True)
    one.add_argument("--acl", required=True)
    one.add_argument("--check", action="store_true")
    two = modes.add_parser("share")
    two.add_argument("--from", dest="source", required=True)
    two.add_argument("--to", required=True)
    two.add_argument("--owner", required=True)
    two.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    for line in (ensure if args.mode == "ensure" else share)(args):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
