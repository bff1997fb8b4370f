#!/usr/bin/env python3
"""PgBouncer's auth_file on the database host: check and write. Uploaded by the deploy.

Runs as root with the system python3 (standard library only), next to pgpasswords.py,
whose passfile reader and pg_authid query it reuses. The auth_file holds exactly:

* the auth_user's password (PgBouncer logs in to PostgreSQL as that role to run its
  auth_query; a SCRAM verifier cannot be used for an outgoing login, so this one line
  is a password, generated on this host by pgpasswords.py and never anywhere else), and
* the SCRAM verifiers of the stats users, copied from pg_authid, because PgBouncer 1.18
  does not run auth_query for its admin console (a client of the virtual ``pgbouncer``
  database that is not in the auth_file waits forever).

Every application login is looked up with auth_query, so no application role is in the
file. The file is 0600, owned by postgres (PgBouncer's user). Nothing printed holds a
password or a verifier.

    pgbouncer_authfile.py check --passfile F --auth-file A --port P AUTH_USER [STATS_USER...]
    pgbouncer_authfile.py write --passfile F --auth-file A --port P AUTH_USER [STATS_USER...]

check prints one line per problem (nothing when in shape); write rewrites the file and
prints "written". Exit codes: 0 done, 1 failed (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pgpasswords import ROLE_RE, Failure, read_passfile, stored_verifiers  # noqa: E402

OWNER = "postgres"


def _quote(value: str) -> str:
    # auth_file syntax: "name" "secret", a double quote doubled inside.
    return '"' + value.replace('"', '""') + '"'


def wanted(passfile: str, port: int, auth_user: str, stats_users: list[str]) -> str:
    """The auth_file's expected content.

    :raises Failure: the auth_user has no password in the passfile, or a stats user
        has no SCRAM verifier in pg_authid.
    """
    password = read_passfile(passfile).get(auth_user)
    if not password:
        raise Failure(f"no password for {auth_user} in {passfile}; run the deploy")
    lines = [f"{_quote(auth_user)} {_quote(password)}"]
    verifiers = stored_verifiers(port, stats_users) if stats_users else {}
    for user in stats_users:
        verifier = verifiers.get(user, "")
        if not verifier.startswith("SCRAM-SHA-256$"):
            raise Failure(f"role {user} has no SCRAM password in PostgreSQL; run the deploy")
        lines.append(f"{_quote(user)} {_quote(verifier)}")
    return "\n".join(lines) + "\n"


def problems(auth_file: str, expected: str) -> list[str]:
    if not os.path.exists(auth_file):
        return [f"{auth_file} is missing"]
    found = []
    st = os.stat(auth_file)
    if stat.S_IMODE(st.st_mode) != 0o600 or st.st_uid != pwd.getpwnam(OWNER).pw_uid:
        found.append(f"{auth_file} is not 0600 {OWNER}")
    with open(auth_file, encoding="utf-8") as f:
        if f.read() != expected:
            found.append(f"{auth_file} is out of date")
    return found


def write(auth_file: str, expected: str) -> None:
    owner = pwd.getpwnam(OWNER)
    directory = os.path.dirname(auth_file) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".authfile.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(expected)
        os.chmod(tmp, 0o600)
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
        os.replace(tmp, auth_file)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["check", "write"])
    parser.add_argument("--passfile", required=True)
    parser.add_argument("--auth-file", required=True)
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("auth_user")
    parser.add_argument("stats_users", nargs="*")
    args = parser.parse_args(argv)
    bad = [r for r in [args.auth_user, *args.stats_users] if not ROLE_RE.match(r)]
    if bad:
        print(f"pgbouncer_authfile: invalid role name {bad[0]!r}", file=sys.stderr)
        return 2
    os.umask(0o077)
    try:
        if args.mode == "check":
            # A fact: report what is wrong (the deploy then writes), never fail.
            try:
                expected = wanted(args.passfile, args.port, args.auth_user, args.stats_users)
            except Failure as exc:
                print(exc)
                return 0
            for line in problems(args.auth_file, expected):
                print(line)
        else:
            expected = wanted(args.passfile, args.port, args.auth_user, args.stats_users)
            write(args.auth_file, expected)
            print("written")
    except (Failure, OSError, KeyError) as exc:
        print(f"pgbouncer_authfile {args.mode}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
