#!/usr/bin/env python3
"""Role passwords on the database host: generate, check, apply. Uploaded by the deploy.

Runs as root with the system python3 (standard library only). Passwords are created
here, on the host, kept in a libpq password file (0600, directory 0700) and applied
to PostgreSQL as pre-hashed SCRAM-SHA-256 verifiers from a 0600 SQL file. Nothing this
script prints, and nothing in its or psql's argv, contains a password or a verifier:
output is role names only.

    pgpasswords.py ensure --passfile F ROLE...          add missing roles to F
    pgpasswords.py check  --passfile F --port P ROLE... print roles whose verifier is stale
    pgpasswords.py apply  --passfile F --port P ROLE... set stale verifiers, print roles set
    pgpasswords.py share  --passfile F --to G --owner U [--check] ROLE...
                          write G (0600, owned by U) with only ROLE's lines of F; print G
                          when it was (--check: would be) rewritten

Exit codes: 0 done, 1 failed (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import secrets
import subprocess
import sys
import tempfile

ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
SCRAM_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$")
SOCKET_DIR = "/var/run/postgresql"
AUTHID_SQL = (
    "SELECT rolname, coalesce(rolpassword, '') FROM pg_authid "
    "WHERE rolname = ANY (string_to_array('{names}', ','))"
)


class Failure(Exception):
    pass


# --- libpq password file -------------------------------------------------------------
def _split_fields(line: str) -> list[str]:
    """Split a passfile line on unescaped ':' and undo the \\: and \\\\ escapes."""
    fields, current, escaped = [], [], False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields


def read_passfile(path: str) -> dict[str, str]:
    """``{role: password}`` from lines ``host:port:db:role:password`` (first line wins)."""
    passwords: dict[str, str] = {}
    if not os.path.exists(path):
        return passwords
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            fields = _split_fields(line)
            if len(fields) == 5:
                passwords.setdefault(fields[3], fields[4])
    return passwords


def ensure(passfile: str, roles: list[str]) -> list[str]:
    """Append a fresh password for each role the file lacks; return the roles added."""
    directory = os.path.dirname(passfile) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    existing = read_passfile(passfile)
    missing = [r for r in roles if r not in existing]
    if not missing:
        return []
    old = ""
    if os.path.exists(passfile):
        with open(passfile, encoding="utf-8") as f:
            old = f.read()
        if old and not old.endswith("\n"):
            old += "\n"
    # token_urlsafe: letters, digits, - and _ only, so no passfile escaping is needed.
    new_lines = "".join(f"*:*:*:{role}:{secrets.token_urlsafe(32)}\n" for role in missing)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".pgpass.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(old + new_lines)
        os.chmod(tmp, 0o600)
        os.replace(tmp, passfile)
    except BaseException:
        os.unlink(tmp)
        raise
    return missing


# --- SCRAM-SHA-256 (RFC 5802 / RFC 7677), as PostgreSQL stores it -------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    # PostgreSQL SASLpreps the password first; generated passwords are ASCII, for which
    # SASLprep is the identity.
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(password: str, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`` string pg_authid holds."""
    salt = salt if salt is not None else os.urandom(16)
    stored_key, server_key = _keys(password, salt, iterations)
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def verifier_matches(verifier: str, password: str) -> bool:
    """True when ``verifier`` (from pg_authid) was made from ``password``."""
    m = SCRAM_RE.match(verifier or "")
    if not m:
        return False  # no password, or md5: replace it with SCRAM
    iterations, salt, stored, server = m.groups()
    stored_key, server_key = _keys(password, base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(_b64(stored_key), stored) and hmac.compare_digest(
        _b64(server_key), server
    )


# --- PostgreSQL ---------------------------------------------------------------------
def _psql(port: int, stdin, *, tuples: bool) -> str:
    cmd = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
           "-h", SOCKET_DIR, "-p", str(port), "-d", "postgres", "-f", "-"]
    if tuples:
        cmd[5:5] = ["-A", "-t", "-F", "|"]
    done = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, cwd="/",
                          check=False)
    if done.returncode != 0:
        # psql's own message names the statement's problem; it holds no verifier because
        # the statements' text is never echoed (no -e / -a).
        raise Failure(f"psql failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def stored_verifiers(port: int, roles: list[str]) -> dict[str, str]:
    sql = AUTHID_SQL.format(names=",".join(roles))
    with tempfile.TemporaryFile("w+", encoding="utf-8") as f:
        f.write(sql)
        f.seek(0)
        out = _psql(port, f, tuples=True)
    verifiers = {}
    for line in out.splitlines():
        name, _, verifier = line.partition("|")
        verifiers[name] = verifier
    return verifiers


def stale_roles(passfile: str, port: int, roles: list[str]) -> list[str]:
    passwords = read_passfile(passfile)
    verifiers = stored_verifiers(port, roles)
    return [
        r for r in roles
        if r not in passwords or not verifier_matches(verifiers.get(r, ""), passwords[r])
    ]


def apply(passfile: str, port: int, roles: list[str]) -> list[str]:
    """Set a fresh verifier for every stale role from a 0600 SQL file; return them."""
    stale = stale_roles(passfile, port, roles)
    passwords = read_passfile(passfile)
    missing = [r for r in stale if r not in passwords]
    if missing:
        raise Failure(f"no password in {passfile} for {', '.join(missing)}; run `ensure` first")
    if not stale:
        return []
    # Keep the statements out of the server log whatever log_statement says.
    lines = ["SET log_statement = 'none';", "SET log_min_duration_statement = -1;",
             "SET log_min_error_statement = 'panic';",
             # ... and out of pg_stat_statements, which keeps utility statements verbatim.
             "SET pg_stat_statements.track_utility = off;"]
    lines += [
        f"ALTER ROLE \"{r}\" PASSWORD '{scram_verifier(passwords[r])}';" for r in stale
    ]
    workdir = tempfile.mkdtemp(prefix="donnadb-pw.")  # 0700, root
    path = os.path.join(workdir, "passwords.sql")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        # root opens the file and hands it to psql on stdin, so it never has to be
        # readable by anyone but root.
        with open(path, encoding="utf-8") as f:
            _psql(port, f, tuples=False)
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(workdir)
    return stale


def share(passfile: str, target: str, owner: str, roles: list[str], *,
          check: bool = False) -> list[str]:
    """Give ``owner`` a passfile of its own holding only ``roles``; ``[target]`` if changed.

    The consumer's file is written beside nothing else it could read: a new file,
    fsynced, chowned and renamed over the old one, so it never holds more than the
    roles asked for, not even for a moment.
    """
    import pwd

    passwords = read_passfile(passfile)
    missing = [r for r in roles if r not in passwords]
    if missing:
        raise Failure(f"no password in {passfile} for {', '.join(missing)}; run `ensure` first")
    wanted = "".join(f"*:*:*:{r}:{passwords[r]}\n" for r in roles)
    user = pwd.getpwnam(owner)
    try:
        st = os.lstat(target)
        with open(target, encoding="utf-8") as f:
            same = (f.read() == wanted and st.st_uid == user.pw_uid
                    and (st.st_mode & 0o777) == 0o600 and os.path.isfile(target)
                    and not os.path.islink(target))
    except FileNotFoundError:
        same = False
    if same:
        return []
    if check:
        return [target]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=".pgpass.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(wanted)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.chown(tmp, user.pw_uid, user.pw_gid)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return [target]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["ensure", "check", "apply", "share"])
    parser.add_argument("--passfile", required=True)
    parser.add_argument("--to", help="share: the consumer's passfile")
    parser.add_argument("--owner", help="share: the consumer's OS user")
    parser.add_argument("--check", action="store_true", help="share: only report")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("roles", nargs="+")
    args = parser.parse_args(argv)
    bad = [r for r in args.roles if not ROLE_RE.match(r)]
    if bad:
        print(f"pgpasswords: invalid role name {bad[0]!r}; use a-z, 0-9 and _", file=sys.stderr)
        return 2
    if args.mode == "share" and not (args.to and args.owner):
        print("pgpasswords share: --to and --owner are required", file=sys.stderr)
        return 2
    os.umask(0o077)
    try:
        if args.mode == "ensure":
            done = ensure(args.passfile, args.roles)
        elif args.mode == "check":
            done = stale_roles(args.passfile, args.port, args.roles)
        elif args.mode == "share":
            done = share(args.passfile, args.to, args.owner, args.roles, check=args.check)
        else:
            done = apply(args.passfile, args.port, args.roles)
    except (Failure, OSError, KeyError) as exc:
        print(f"pgpasswords {args.mode}: {exc}", file=sys.stderr)
        return 1
    for role in done:
        print(role)
    return 0


if __name__ == "__main__":
    sys.exit(main())
