"""One OS user and one passfile per consumer; jobs run as their user, never as root.

Each test acts as the consumer's real system user (``runuser``), the way a compromised
application or job would, and tries to reach what is not its own.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from donnadb.provision import opsjobs
from tests.provision.deployrun import load_group_data
from tests.support import (
    GroupData,
    systemd_running,
    unit_properties,
    with_systemd,
    without_systemd,
)

pytestmark = pytest.mark.deploy


def as_user(user: str, *cmd: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``cmd`` as ``user`` with a clean environment (plus ``env``), from /."""
    base = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
    return subprocess.run(["runuser", "-u", user, "--", "env", "-i",
                           *[f"{k}={v}" for k, v in base.items()], *cmd],
                          capture_output=True, text=True, cwd="/", timeout=timeout, check=False)


def passfile_roles(path: Path) -> list[str]:
    return [line.split(":")[3] for line in path.read_text().splitlines() if line.strip()]


def test_each_consumer_has_its_own_passfile_with_its_roles_only(deployed, deploy_settings):
    from donnadb.provision import consumers

    for user, kinds in deploy_settings.db_consumers.items():
        path = Path(consumers.passfile_of(deploy_settings, user))
        st = path.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam(user).pw_uid, 0o600), path
        assert passfile_roles(path) == [deploy_settings.role(k) for k in kinds], path


def test_the_app_user_cannot_read_any_other_credential(deployed, deploy_settings):
    from donnadb.provision import consumers

    own = consumers.passfile_of(deploy_settings, "donna-app")
    assert as_user("donna-app", "cat", own).returncode == 0
    for other in (deploy_settings.db_passfile,
                  consumers.passfile_of(deploy_settings, "donna-ops"),
                  "/etc/donnadb/backup-signing.key"):
        done = as_user("donna-app", "cat", other)
        assert done.returncode != 0 and "Permission denied" in done.stderr, other


CONNECT = """
import sys
from donnadb import db
try:
    with db.connection(sys.argv[1]) as conn:
        print(conn.execute("SELECT current_user").fetchone()[0])
except Exception as exc:
    print(type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", file=sys.stderr)
    sys.exit(1)
"""


def test_the_app_user_logs_in_as_the_app_role_and_nothing_else(deployed, deploy_settings):
    from donnadb.provision import consumers

    python = f"{deploy_settings.donnadb_install_dir}/venv/bin/python"
    env = {"DB_PASSFILE": consumers.passfile_of(deploy_settings, "donna-app")}
    app = as_user("donna-app", python, "-c", CONNECT, "app", env=env)
    assert app.returncode == 0 and app.stdout.strip() == deploy_settings.role("app"), app.stderr
    for kind in ("migrator", "readonly", "backup"):
        done = as_user("donna-app", python, "-c", CONNECT, kind, env=env)
        assert done.returncode != 0, (kind, done.stdout)
        assert "no password for role" in done.stderr, (kind, done.stderr)


def _cron_environment(cron_file: str = opsjobs.CRON_FILE) -> dict[str, str]:
    lines = Path(cron_file).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines
                if "=" in line and not line.startswith("#") and " " not in line.split("=")[0])


@without_systemd
def test_without_systemd_the_cron_jobs_run_as_the_ops_user(deployed, deploy_settings):
    jobs, _ = opsjobs.load_jobs(GroupData(load_group_data()))
    for line in Path(opsjobs.CRON_FILE).read_text().splitlines():
        if line and not line.startswith("#") and "donnactl" in line:
            assert line.split()[5] == opsjobs.OPS_USER, line
    # What cron does each minute: the metrics job's command line, as its user.
    textfile = Path(opsjobs.textfile_dir(deploy_settings)) / "donnadb.prom"
    textfile.unlink(missing_ok=True)
    done = as_user(opsjobs.OPS_USER, "sh", "-c", opsjobs.command(deploy_settings, jobs["metrics"]),
                   env=_cron_environment())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "donnadb_up 1" in textfile.read_text()
    assert textfile.stat().st_uid == pwd.getpwnam(opsjobs.OPS_USER).pw_uid


@with_systemd
def test_with_systemd_the_ops_units_run_sandboxed_as_the_ops_user(deployed):
    props = unit_properties("donna-ops-metrics.service", "User", "NoNewPrivileges",
                            "ProtectSystem", "PrivateTmp", "OnFailure")
    assert props == {"User": opsjobs.OPS_USER, "NoNewPrivileges": "yes",
                     "ProtectSystem": "strict", "PrivateTmp": "yes",
                     "OnFailure": "donna-job-failed@donna-ops-metrics.service.service"}, props


@with_systemd
def test_with_systemd_a_failed_job_is_reported(deployed):
    unit = f"donna-fail-test-{os.getpid()}"
    # A transient unit's properties get no specifier expansion: name the instance.
    subprocess.run(["systemd-run", "--wait", "--quiet", f"--unit={unit}",
                    "-p", f"OnFailure=donna-job-failed@{unit}.service.service", "/bin/false"],
                   capture_output=True, text=True, timeout=60, check=False)
    subprocess.run(["systemctl", "reset-failed", f"{unit}.service"], check=False)
    for _ in range(50):  # the report is a unit of its own, started after the failure
        log = subprocess.run(["journalctl", "-q", "-t", "donnadb-jobs", "--no-pager"],
                             capture_output=True, text=True, check=False).stdout
        if f"{unit}.service failed" in log:
            return
        subprocess.run(["sleep", "0.2"], check=True)
    pytest.fail(f"no failure report for {unit} in the journal")


def test_the_jobs_never_run_code_from_a_checkout(deployed, deploy_settings):
    texts = [p.read_text() for p in Path(opsjobs.UNIT_DIR).glob("donna-*.service")]
    if not systemd_running():
        texts += [Path(opsjobs.CRON_FILE).read_text(), Path("/etc/cron.d/donna-backup").read_text()]
    for text in texts:
        for line in text.splitlines():
            runs_code = line.startswith("ExecStart=") or " root " in line or " cd / " in line
            if runs_code and ("donnactl" in line or "donna-backup" in line):
                assert deploy_settings.donnadb_install_dir in line, line


@pytest.fixture
def group_repo(settings):
    """A backup repository where the ops user could reach it (not under root's 0700 /tmp)."""
    import grp
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="donna-repo-", dir="/var/tmp"))  # noqa: S108
    base.chmod(0o711)
    repo = base / "repo"
    repo.mkdir(mode=0o750)
    os.chown(repo, 0, grp.getgrnam("donnadb").gr_gid)
    yield repo
    shutil.rmtree(base, ignore_errors=True)


def test_the_ops_user_sees_backup_state_but_no_dump(deployed, deploy_settings, settings,
                                                    scratch_db, group_repo):
    from donnadb.backup import snapshot

    backup = snapshot.create_backup(settings.model_copy(update={"backup_repo_dir": group_repo}),
                                    dbname=scratch_db)
    python = f"{deploy_settings.donnadb_install_dir}/venv/bin/python"
    latest = ("import json; from donnadb.ops import backups; from pathlib import Path; "
              f"print(backups.latest(repo=Path('{group_repo}'))['backup_id'])")
    done = as_user(opsjobs.OPS_USER, python, "-c", latest)
    assert done.stdout.strip() == backup.backup_id, done.stderr
    dump = next(p for p in (backup.path / "dump").iterdir() if p.is_file())
    denied = as_user(opsjobs.OPS_USER, "cat", str(dump))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


BACKUP_CRON = "/etc/cron.d/donna-backup"


@without_systemd
def test_without_systemd_the_backup_jobs_run_as_the_cluster_owner(deployed, settings):
    """The snapshot, a physical differential and the weekly restore drill, each as cron
    runs it: as postgres. (The differential first also keeps the drill's WAL replay
    short: it replays from the newest physical backup to now.)"""
    from donnadb.provision import backups

    lines = [ln for ln in Path(BACKUP_CRON).read_text().splitlines()
             if ln and not ln.startswith("#") and "donna-backup " in ln]
    assert lines and all(ln.split()[5] == backups.JOB_USER for ln in lines), lines
    env = _cron_environment(BACKUP_CRON)
    script = next(ln for ln in lines if ln.endswith("2>&1")).split()[6]
    before = {p.name for p in settings.backup_repo_dir.iterdir()}
    jobs = ("snapshot", "physical-diff", "verify") if settings.pgbackrest_enabled \
        else ("snapshot", "verify")
    for job in jobs:
        done = as_user(backups.JOB_USER, "sh", "-c", f"{script} {job}", env=env, timeout=900)
        assert done.returncode == 0, (job, done.stdout[-1500:], done.stderr[-1500:])
    made = [settings.backup_repo_dir / n for n in
            {p.name for p in settings.backup_repo_dir.iterdir()} - before
            if not n.startswith(".")]
    assert made, "the snapshot job made no backup"
    owner = pwd.getpwnam(backups.JOB_USER).pw_uid
    for path in [made[0], *made[0].rglob("*")]:
        assert path.stat().st_uid == owner, path


def test_an_operator_running_backup_commands_as_root_works_as_the_repository_owner(
        deployed, settings):
    """Root's `donnactl backup create` makes a backup the jobs can prune and verify."""
    from donnadb.provision import backups

    done = subprocess.run([install_donnactl(), "backup", "create", "--json"], cwd="/",
                          capture_output=True, text=True, timeout=600, check=False,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    made = settings.backup_repo_dir / json.loads(done.stdout)["backup_id"]
    owner = pwd.getpwnam(backups.JOB_USER).pw_uid
    assert all(p.stat().st_uid == owner for p in [made, *made.rglob("*")])


def install_donnactl() -> str:
    from donnadb.provision import install

    return install.PATH_LINK


@with_systemd
def test_with_systemd_the_backup_units_run_sandboxed_as_the_cluster_owner(deployed):
    props = unit_properties("donna-backup-snapshot.service", "User", "NoNewPrivileges",
                            "ProtectSystem")
    assert props == {"User": "postgres", "NoNewPrivileges": "yes",
                     "ProtectSystem": "strict"}, props
    # What the timer does at night: the snapshot, sandboxed, as postgres.
    subprocess.run(["systemctl", "start", "donna-backup-snapshot.service"], check=True,
                   capture_output=True, timeout=600)
    service = unit_properties("donna-backup-snapshot.service", "Result", "ExecMainStatus")
    assert service == {"Result": "success", "ExecMainStatus": "0"}, service
