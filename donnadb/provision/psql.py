"""Shell commands that run SQL as the postgres superuser on the target host.

The superuser is reached by peer authentication over the Unix socket
(``runuser -u postgres -- psql``): no superuser password exists anywhere. SQL travels
on psql's stdin (a here-document), never a secret: passwords are applied by the
uploaded helper from a 0600 file (see :mod:`donnadb.provision.passwords`).
"""

from __future__ import annotations

SOCKET_DIR = "/var/run/postgresql"
#: The here-document terminator; SQL containing it on a line of its own is refused.
HEREDOC = "DONNA_SQL_EOF"
#: What a guarded fact prints when it cannot ask PostgreSQL (down, or no such database).
DOWN_MARKER = "#donnadb:down"
NODB_MARKER = "#donnadb:nodb"
#: Printed after a guarded command succeeded: pyinfra turns empty output into the fact's
#: default (None), and "no rows" must stay distinguishable from "unknown".
END_MARKER = "#donnadb:end"


def quote_ident(name: str) -> str:
    """SQL identifier quoting, for names already validated by settings.IDENT_RE."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def psql(port: int, dbname: str = "postgres", *, tuples: bool = False) -> str:
    """The psql invocation as postgres (stops on the first error)."""
    flags = "-X -q -v ON_ERROR_STOP=1"
    if tuples:
        flags += " -A -t -F '|'"
    return f"runuser -u postgres -- psql {flags} -h {SOCKET_DIR} -p {int(port)} -d {dbname}"


def run_sql(sql: str, port: int, dbname: str = "postgres", *, tuples: bool = False) -> str:
    """A shell command feeding ``sql`` to psql through a quoted here-document."""
    if any(line.strip() == HEREDOC for line in sql.splitlines()):
        raise ValueError(f"SQL may not contain a line {HEREDOC}")
    # cd /: postgres cannot read root's working directory, and psql would say so.
    return f"cd / && {psql(port, dbname, tuples=tuples)} <<'{HEREDOC}'\n{sql}\n{HEREDOC}"


def guarded(command: str, port: int, dbname: str | None = None) -> str:
    """Run ``command`` only when the server answers (and ``dbname`` exists).

    Facts are gathered before anything is installed on a fresh host; printing a marker
    instead of failing lets them report "unknown" there rather than fail the host.
    """
    ready = (
        f"command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h {SOCKET_DIR} -p {int(port)}"
    )
    inner = f"(\n{command}\n) && echo '{END_MARKER}'"
    if dbname:
        exists = run_sql(
            f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(dbname)}",
            port,
            tuples=True,
        )
        inner = (
            f'if [ "$({exists}\n)" = "1" ]; then\n{inner}\nelse echo \'{NODB_MARKER}\'; fi'
        )
    return f"if {ready}; then\n{inner}\nelse echo '{DOWN_MARKER}'; fi"
