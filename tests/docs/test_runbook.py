"""Executes docs/runbook.md: every ```runbook-test block runs against the test deployment.

Blocks run in order, in one bash each (``set -euo pipefail``), with the deployed
cluster, roles and passfile, but ``DB_NAME`` pointing at a migrated scratch database and
every file the commands write (backups, archives, logs, metrics) in a temporary
directory. ``exit=0,1`` on the fence lists the accepted exit codes (default 0);
``sandbox=rotation`` maps the app role to a throwaway role and passfile, so rotating it
leaves the deployment's passwords alone. The scratch database holds a few rows (so the
restore drill has something to count; ``$RUNBOOK_USER_ID`` and ``$RUNBOOK_CHAT_ID`` name
one of its users and that user's chat); databases the blocks create are named
``$DB_NAME_*`` and dropped with it. ``sandbox=legacy`` imports generated legacy files
(``$DATA_DIR``) into a fresh ``$DB_NAME_legacy``. ``sandbox=replica`` gives the block two
throwaway clusters (``$PRIMARY_PORT``, ``$REPLICA_PORT``; never 15/main), dropped afterwards.
``sandbox=cluster`` points ``PATRONI_CONFIG`` at the local Patroni cluster (``$LEADER``,
``$REPLICA``); ``fault=leader-lost`` first kills the leader for real (``$LOST``) and
waits for Patroni to elect another; the cluster is healed afterwards.
``skip=REASON`` is only for a block that something else runs; the reason must be one of
``SKIPPED`` and its check (e.g. "CI's ``make test`` runs ``make deploy`` first") is
asserted instead. Any other fenced block (``console`` ...), or a ``runbook-test`` fence
indented inside a list item (which the harness would not see), fails
``test_every_command_block_is_executed``: every command block of the runbook is run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from donnadb.provision import bootstrap
from tests.support import (
    create_scratch_database,
    drop_database,
    give_deploy_tls,
    render_database_sql,
    superuser_psql,
)

#: Rows for the restore drill to count and compare (as the owner, like the migrations).
SEED_SQL = """
SET ROLE {owner};
INSERT INTO users (clerk_id, email, name)
SELECT 'runbook_' || g, 'rb' || g || '@example.org', 'Runbook ' || g
FROM generate_series(1, 12) g;
INSERT INTO chat_sessions (chat_id, user_id, title)
SELECT 'chat_' || clerk_id, id, 'drill' FROM users;
INSERT INTO messages (chat_session_id, role, content, sequence_number)
SELECT cs.id, 'user', 'hello ' || g, g FROM chat_sessions cs, generate_series(1, 5) g;
"""
#: Databases a block made (``${DB_NAME}_restored`` ...), dropped with the scratch database.
SQL_DERIVED_DATABASES = "SELECT datname FROM pg_database WHERE starts_with(datname, '{name}_')"
#: The seeded user (and chat) the support blocks inspect and erase.
SQL_SEEDED_IDS = """
SELECT u.id, cs.chat_id FROM users u JOIN chat_sessions cs ON cs.user_id = u.id
WHERE u.clerk_id = 'runbook_1'
"""
#: The stand-in for the deployed primary on the sandbox cluster: what `status` reads.
SQL_REPLICA_SANDBOX = """
SET log_statement = 'none';
SET log_min_duration_statement = -1;
CREATE ROLE {readonly} LOGIN PASSWORD '{password}' IN ROLE pg_read_all_stats;
CREATE DATABASE "{dbname}";
"""
#: Ports the two throwaway clusters of the replica drill may use (this suite's range).
REPLICA_PORTS = range(5460, 5470)

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"
MAKEFILE = ROOT / "Makefile"
CI_SCRIPT = ROOT / ".ci" / "run"
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.S | re.M)
#: Any fence, indented ones (inside a list item) included: those are never executed.
ANY_FENCE = re.compile(r"^[ \t]*```([^\n]*)\n(.*?)^[ \t]*```\s*$", re.S | re.M)
HEADING = re.compile(r"^#{2,3} (.+)$", re.M)


def blocks(fence: re.Pattern[str] = FENCE) -> list[tuple[str, dict[str, str], str]]:
    """(section heading, fence options, body) of every fenced block, in order."""
    text = RUNBOOK.read_text(encoding="utf-8")
    found = []
    for match in fence.finditer(text):
        info = match.group(1).split()
        heads = HEADING.findall(text, 0, match.start())
        options = dict(item.split("=", 1) for item in info[1:] if "=" in item)
        found.append((heads[-1] if heads else "", {"lang": info[0] if info else "", **options},
                      match.group(2)))
    return found


TESTED = [(i, head, opts, body) for i, (head, opts, body) in enumerate(blocks())
          if opts["lang"] == "runbook-test"]


@pytest.fixture(scope="module")
def deployment(settings, tmp_path_factory):
    """Environment of the runbook blocks: a migrated scratch database and private dirs."""
    from donnadb.migrate import apply_migrations

    tmp = tmp_path_factory.mktemp("runbook")
    name = create_scratch_database(settings, prefix="donna_runbook")
    apply_migrations(settings=settings, dbname=name)
    superuser_psql(SEED_SQL.format(owner=settings.db_role_owner), dbname=name)
    user_id, chat_id = superuser_psql(SQL_SEEDED_IDS, dbname=name).split("|")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "DB_NAME": name, "OPS_LOG_FILE": str(tmp / "donnactl.jsonl"),
           "BACKUP_REPO_DIR": str(tmp / "backups"), "LOG_ARCHIVE_DIR": str(tmp / "archive"),
           "METRICS_TEXTFILE": str(tmp / "donnadb.prom"), "BACKUP_S3_BUCKET": "",
           # The host's own physical backups are not the scratch database's business
           # (tests/backup/test_pitr*.py drill them on clusters of their own).
           "PGBACKREST_ENABLED": "false",
           "BACKUP_JOBS": "1", "RUNBOOK_USER_ID": user_id, "RUNBOOK_CHAT_ID": chat_id,
           "COLUMNS": "120"}
    try:
        yield env, tmp, name
    finally:
        for derived in superuser_psql(SQL_DERIVED_DATABASES.format(name=name)).split():
            drop_database(derived)
        drop_database(name)


@pytest.fixture
def rotation_sandbox(deployment, settings):
    """A throwaway LOGIN role standing in for the app role, with its own passfile."""
    env, tmp, dbname = deployment
    role = f"donna_rb_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    superuser_psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    superuser_psql(f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}')
    # It logs in through PgBouncer as the app role does: admit it to the lookup too.
    superuser_psql(bootstrap.auth_sql(bootstrap.AUTH_USER, [settings.db_role_app, role,
                                                            settings.db_role_readonly])[0],
                   dbname=dbname)
    passfile = tmp / f"pgpass-{role}"
    passfile.write_text(settings.db_passfile.read_text() + f"*:*:*:{role}:{password}\n")
    passfile.chmod(0o600)
    yield {"DB_ROLE_APP": role, "DB_PASSFILE": str(passfile),
           "PGBOUNCER_AUTH_FILE": str(tmp / "no-userlist.txt")}
    superuser_psql(f'REVOKE CONNECT ON DATABASE "{dbname}" FROM {role}')
    superuser_psql(f"DROP ROLE {role}")


def _pg_cluster(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, cwd="/")


@pytest.fixture
def replica_sandbox(deployment, settings, tmp_path):
    """Two throwaway clusters standing in for the primary and the freshly deployed replica.

    The "primary" has the readonly role (its password in a private passfile) and a
    database named ``DB_NAME``, so `donnactl status` can read it as it reads the deployment.
    """
    _, _, dbname = deployment
    ports = _free_ports(2)
    suffix = uuid.uuid4().hex[:6]
    primary, replica = f"rbprimary{suffix}", f"rbreplica{suffix}"
    made, made_dirs = [], []
    try:
        for name, port in zip((primary, replica), ports, strict=True):
            _pg_cluster("pg_createcluster", "15", name, "-p", str(port))
            made.append(name)
            give_deploy_tls(15, name)
            _pg_cluster("pg_ctlcluster", "15", name, "start")
        password = uuid.uuid4().hex
        superuser_psql(SQL_REPLICA_SANDBOX.format(readonly=settings.db_role_readonly,
                                                  password=password, dbname=dbname),
                       port=ports[0])
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"*:*:*:{settings.db_role_readonly}:{password}\n")
        passfile.chmod(0o600)
        # The replica's copy of the replication password is read by postgres, which cannot
        # enter pytest's tmp_path (0700 root): a private directory of its own in /tmp.
        private = Path(tempfile.mkdtemp(prefix="runbook-replica-"))
        made_dirs.append(private)
        os.chown(private, *_postgres_ids())
        yield {"PRIMARY_HOST": "127.0.0.1", "PRIMARY_PORT": str(ports[0]),
               "PRIMARY_CLUSTER": primary, "REPLICA_ADDR": "127.0.0.1",
               "REPLICA_PORT": str(ports[1]), "REPLICA_CLUSTER": replica,
               "REPLICATION_PASSFILE": str(private / "pgpass"), "DB_PASSFILE": str(passfile)}
    finally:
        for name in made:
            subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True,
                           cwd="/")
            # pg_dropcluster leaves the config directory holding our conf.d/donna-tls.conf.
            shutil.rmtree(f"/etc/postgresql/15/{name}", ignore_errors=True)
        for path in made_dirs:
            shutil.rmtree(path)


@pytest.fixture
def cluster_sandbox(patroni_cluster):
    """The local Patroni cluster, healthy: ``$PATRONI_CONFIG``, ``$LEADER`` and
    ``$REPLICA`` (an asynchronous replica). Healed again afterwards."""
    members = patroni_cluster.heal()
    yield {"PATRONI_CONFIG": str(patroni_cluster.config),
           "LEADER": next(m["name"] for m in members if m["role"] == "leader"),
           "REPLICA": next(m["name"] for m in members if m["role"] == "replica")}
    patroni_cluster.heal()


@pytest.fixture(scope="module")
def legacy_sandbox(deployment, settings):
    """Generated legacy files and a fresh migrated database (``$DB_NAME_legacy``) to import.

    The database is dropped with the scratch database; the files live in the module's
    temporary directory.
    """
    from donnadb.legacy.fixtures import generate
    from donnadb.migrate import apply_migrations

    _, tmp, dbname = deployment
    target = f"{dbname}_legacy"
    superuser_psql(f'CREATE DATABASE "{target}"')
    superuser_psql(render_database_sql(settings), dbname=target)
    apply_migrations(settings=settings, dbname=target)
    data = tmp / "legacy-data"
    generate(data, users=6, chats=12, messages_per_chat=4, logs=10, large_message_bytes=1024,
             long_chat_messages=50)
    return {"DB_NAME": target, "DATA_DIR": str(data), "REPORT_DIR": str(tmp / "reports"),
            "EXPORT_DIR": str(tmp / "legacy-export")}


def _free_ports(count: int) -> list[int]:
    """``count`` ports of REPLICA_PORTS that no cluster is configured for and nothing holds."""
    import socket

    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                            check=True).stdout
    configured = {int(line.split()[2]) for line in listed.splitlines() if line.strip()}
    free = []
    for port in REPLICA_PORTS:
        if port in configured:
            continue
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                continue
        free.append(port)
        if len(free) == count:
            return free
    pytest.fail(f"no {count} free ports in {REPLICA_PORTS}: drop leftover clusters "
                "(pg_lsclusters)")


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _make_prerequisites(target: str) -> list[str]:
    """The prerequisites of ``target`` in the Makefile (one rule line, no recursion)."""
    rule = re.search(rf"^{re.escape(target)}:([^=\n]*)$", MAKEFILE.read_text(), re.M)
    assert rule, f"Makefile has no {target!r} target"
    return rule.group(1).split()


def _ci_runs_it(body: str) -> None:
    """Every `make X` of the block runs in CI: .ci/run runs `make test`, which needs X."""
    assert re.search(r"^make test\b", CI_SCRIPT.read_text(), re.M), \
        ".ci/run does not run make test"
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    assert lines, "empty block"
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "make" and len(words) == 2, f"ci-runs-it is for `make X` only: {line!r}"
        assert words[1] in _make_prerequisites("test"), f"make test does not run {line!r} first"


#: Why a ``runbook-test`` block may be skipped, and what is checked instead.
SKIPPED = {"ci-runs-it": _ci_runs_it}


def test_ci_runs_it_check_can_fail():
    _ci_runs_it("make deploy\n")
    for body in ("make bench\n", "make deploy && rm -rf /\n", "\n"):
        with pytest.raises(AssertionError):
            _ci_runs_it(body)


def test_every_command_block_is_executed():
    text = RUNBOOK.read_text(encoding="utf-8")
    untested = []
    for match in ANY_FENCE.finditer(text):
        heads = HEADING.findall(text, 0, match.start())
        head = heads[-1] if heads else ""
        lang = (match.group(1).split() or [""])[0]
        executed = lang == "runbook-test" and match.group(0)[0] not in " \t"
        if not executed:
            untested.append(f"{head}: {match.group(0).splitlines()[0].strip()}")
    assert not untested, ("blocks the test never runs (fence them `runbook-test` at the "
                          f"start of a line): {untested}")


def test_runbook_has_tested_blocks_for_every_procedure():
    heads = {head for _, head, _, _ in TESTED}
    for procedure in ("Daily look", "First deploy", "Adding a replica", "Rotating role passwords",
                      "Taking and restoring a backup", "Partitions and retention",
                      "Migrating the legacy files", "Support: a user or a chat",
                      "A runaway query", "Disk full", "Minor PostgreSQL update"):
        assert any(h.startswith(procedure) for h in heads), procedure


@pytest.mark.parametrize(("index", "head", "options", "body"), TESTED,
                         ids=[f"{i}-{h[:30]}" for i, h, _, _ in TESTED])
def test_runbook_block(index, head, options, body, deployment, request):
    env, tmp, _ = deployment
    if "skip" in options:
        assert options["skip"] in SKIPPED, f"block {index}: unknown skip={options['skip']}"
        SKIPPED[options["skip"]](body)
        return
    sandbox = options.get("sandbox")
    if sandbox is not None:
        assert sandbox in ("rotation", "replica", "legacy", "cluster"), (
            f"block {index}: sandbox={sandbox}?")
        env = {**env, **request.getfixturevalue(f"{sandbox}_sandbox")}
    if "fault" in options:
        assert sandbox == "cluster", f"block {index}: fault= needs sandbox=cluster"
        env["LOST"] = request.getfixturevalue("patroni_cluster").fault(options["fault"])
    accepted = {int(c) for c in options.get("exit", "0").split(",")}
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + body], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in accepted, (
        f"block {index} under '{head}' exited {done.returncode}:\n{body}\n"
        f"--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}")
