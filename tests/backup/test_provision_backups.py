"""The backup part of the deploy: settings, unit/cron files, and pgBackRest on a
throwaway cluster (real pyinfra run against @local)."""

from __future__ import annotations

import dataclasses
import grp
import json
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from donnadb.backup import pitr
from donnadb.errors import ConfigError
from donnadb.provision.backups import (
    PHYSICAL_SCHEDULE,
    UNIT_DIR,
    UNIT_PREFIX,
    cron_text,
    env_text,
    load_backup_deploy,
    service_unit,
    stanza_create_command,
    timer_unit,
)
from tests.backup.conftest import TLS_BUCKET
from tests.provision.deployrun import DeployRun
from tests.support import superuser_psql, systemd_running, unit_properties

PORT = 5449
SCRIPT = "/srv/donnadb/bin/donna-backup"
AGE_PUBLIC = "age1d6v0zhuk3k279wvm093r3flzfl5rtxmvwn6apdq8pchq7q46wqaq89a2c7"


@pytest.fixture
def elsewhere(deploy_settings):
    """The deploy's settings with the code and the passfiles somewhere else."""
    return dataclasses.replace(deploy_settings, donnadb_install_dir="/srv/donnadb",
                               db_passfile="/srv/etc/pgpass")


def test_defaults_and_overrides(elsewhere):
    cfg = load_backup_deploy({"backup_keep_last": 3, "backup_s3": {"bucket": "b"}}, elsewhere)
    assert cfg.env == {"BACKUP_KEEP_LAST": "3", "BACKUP_S3_BUCKET": "b",
                       "BACKUP_SIGNING_KEY_FILE": "/etc/donnadb/backup-signing.key",
                       # pgBackRest is on by default, with repo2 in the bucket
                       "PGBACKREST_ENABLED": "true", "PGBACKREST_S3": "true",
                       "PGBACKREST_CONFIG": "/etc/pgbackrest/pgbackrest.conf",
                       "PGBACKREST_INCLUDE_PATH": "/etc/pgbackrest/conf.d",
                       "PGBACKREST_STANZA": "donna"}
    assert set(cfg.schedule) == {"snapshot", "prune", "verify", "check", "physical-full",
                                 "physical-diff", "physical-verify"}
    assert cfg.pgbackrest_s3 == pitr.S3Repo(bucket="b", path="/donna/pgbackrest",
                                            region="us-east-1",
                                            endpoint="s3.us-east-1.amazonaws.com")
    text = env_text(cfg)
    assert "BACKUP_KEEP_LAST=3\n" in text and "AWS_SECRET" not in text
    assert f"ExecStart={SCRIPT} verify\n" in service_unit(cfg, "verify")
    assert "OnCalendar=Sun *-*-* 04:00:00\n" in timer_unit(cfg, "verify")
    assert f"0 4 * * 0 postgres {SCRIPT} verify" in cron_text(cfg)


def test_age_recipients_name_their_file_in_the_env(elsewhere):
    assert "BACKUP_AGE_RECIPIENTS_FILE" not in load_backup_deploy({}, elsewhere).env
    cfg = load_backup_deploy({"backup_age_recipients": [AGE_PUBLIC]}, elsewhere)
    assert cfg.env["BACKUP_AGE_RECIPIENTS_FILE"] == "/etc/donnadb/backup-age-recipients.txt"
    assert cfg.age_recipients == (AGE_PUBLIC,)


def test_backup_units_are_sandboxed_and_report_failure(elsewhere):
    cfg = load_backup_deploy({"backup_repo_dir": "/srv/repo"}, elsewhere)
    unit = service_unit(cfg, "snapshot")
    # The jobs' user's own passfile, beside db_passfile (provision/consumers.py).
    for line in ("User=postgres", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "PrivateTmp=yes", "OnFailure=donna-job-failed@%n.service",
                 "Environment=DB_PASSFILE=/srv/etc/pgpass.d/postgres"):
        assert f"{line}\n" in unit, line
    assert "\nDB_PASSFILE=/srv/etc/pgpass.d/postgres\n" in cron_text(cfg)
    writable = next(x for x in unit.splitlines() if x.startswith("ReadWritePaths="))
    assert "/srv/repo" in writable.split("=", 1)[1].split()


def test_pgbackrest_adds_physical_jobs(elsewhere):
    cfg = load_backup_deploy({"pgbackrest_enabled": True, "pgbackrest_stanza": "s1"}, elsewhere)
    assert {"physical-full", "physical-diff", "physical-verify"} <= set(cfg.schedule)
    assert cfg.env["PGBACKREST_ENABLED"] == "true" and cfg.env["PGBACKREST_STANZA"] == "s1"
    assert cfg.pgbackrest_s3 is None and "PGBACKREST_S3" not in cfg.env
    off = load_backup_deploy({"pgbackrest_enabled": False}, elsewhere)
    assert not off.pgbackrest and not set(off.schedule) & set(PHYSICAL_SCHEDULE)
    # on a cluster the default is off (its stanza would follow one member only)
    cluster = load_backup_deploy({}, dataclasses.replace(elsewhere, ha=True))
    assert not cluster.pgbackrest and "PGBACKREST_ENABLED" not in cluster.env


def test_repo2_follows_the_logical_backups_bucket(elsewhere):
    cfg = load_backup_deploy({"backup_s3": {
        "bucket": "bk", "prefix": "prod/db1/", "region": "eu-west-3",
        "endpoint_url": "https://minio.internal:9000", "ca_file": "/etc/ssl/minio-ca.pem"},
        "pgbackrest_s3_key_type": "shared", "pgbackrest_s3_retention_full": 8}, elsewhere)
    repo = cfg.pgbackrest_s3
    assert (repo.path, repo.endpoint, repo.port, repo.uri_style, repo.key_type) == (
        "/prod/db1/pgbackrest", "minio.internal", 9000, "path", "shared")
    assert cfg.env["BACKUP_S3_CA_FILE"] == "/etc/ssl/minio-ca.pem"
    text = pitr.config_text(stanza="donna", repo_path=Path("/var/lib/pgbackrest"),
                            cluster=pitr.Cluster(15, "main", 5432, Path("/d")), s3=repo)
    for line in ("repo2-type=s3", "repo2-cipher-type=aes-256-cbc", "repo2-s3-bucket=bk",
                 "repo2-storage-port=9000", "repo2-storage-ca-file=/etc/ssl/minio-ca.pem",
                 "repo2-retention-full=8", "repo2-s3-key-type=shared", "repo2-bundle=y"):
        assert f"\n{line}\n" in text, line
    assert "cipher-pass" not in text and "key-secret" not in text


def test_the_stanza_command_does_not_ask_this_machine_for_the_postgres_user(monkeypatch):
    """A fresh machine deploys itself before PostgreSQL (and its user) is installed."""
    def no_such_user(name):
        raise KeyError(name)

    monkeypatch.setattr(pwd, "getpwnam", no_such_user)
    engine = pitr.Engine(Path("/etc/pgbackrest/pgbackrest.conf"), "donna",
                         pitr.Cluster(15, "main", 5432, Path("/d")),
                         include=Path("/etc/pgbackrest/conf.d"))
    assert stanza_create_command(engine) == (
        "runuser -u postgres -- pgbackrest --config=/etc/pgbackrest/pgbackrest.conf "
        "--config-include-path=/etc/pgbackrest/conf.d --stanza=donna stanza-create")


@pytest.mark.parametrize("data, match", [
    ({"backup_schedule": {"hourly": ("a", "b")}}, "backup_schedule"),
    ({"backup_schedule": {"snapshot": "daily"}}, "OnCalendar"),
    ({"backup_s3": {"bukket": "x"}}, "unknown keys"),
    ({"backup_s3": {"bucket": "b", "endpoint_url": "http://127.0.0.1:9000"}}, "TLS only"),
    ({"backup_s3": {"bucket": "b"}, "pgbackrest_s3_key_type": "env"}, "pgbackrest_s3_key_type"),
    ({"backup_age_recipients": ["AGE-SECRET-KEY-1X"]}, "never a private key"),
    ({"backup_age_recipients": AGE_PUBLIC}, "list of age public keys"),
])
def test_bad_settings_are_one_clear_error(data, match, elsewhere):
    with pytest.raises(ConfigError, match=match):
        load_backup_deploy(data, elsewhere)


def test_the_entry_script_rejects_unknown_jobs():
    script = Path(__file__).resolve().parents[2] / "backups" / "donna-backup"
    done = subprocess.run([str(script), "bogus"], capture_output=True, text=True, check=False)
    assert done.returncode == 3 and "usage" in done.stderr


@pytest.fixture
def throwaway_cluster():
    name = f"bkdeploy{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix=f"donna-{name}-", dir="/var/tmp"))  # noqa: S108
    work.chmod(0o711)  # postgres reaches its config and repository below
    subprocess.run(["pg_createcluster", "15", name, "-p", str(PORT), "--start"], check=True,
                   capture_output=True)
    try:
        yield name, work
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True,
                       check=False)
        # pg_dropcluster leaves the config directory when it holds files it did not make
        # (the deploy's conf.d/donna-archive.conf).
        shutil.rmtree(f"/etc/postgresql/15/{name}", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def schedule_target(throwaway_cluster):
    """Where the test's jobs go: systemd's unit directory under names of their own where
    systemd runs (so systemd loads them), else a scratch unit directory and cron file."""
    _, work = throwaway_cluster
    if not systemd_running():
        (work / "units").mkdir()
        yield {"backup_unit_dir": work / "units", "backup_cron_file": work / "cron"}
        return
    prefix = f"donna-bktest{uuid.uuid4().hex[:6]}-"
    yield {"backup_unit_dir": UNIT_DIR, "backup_unit_prefix": prefix,
           "backup_cron_file": work / "cron"}
    units = sorted(Path(UNIT_DIR).glob(f"{prefix}*"))
    subprocess.run(["systemctl", "disable", "--now", *[u.name for u in units]],
                   capture_output=True, check=False)
    for unit in units:
        unit.unlink()
    subprocess.run(["systemctl", "daemon-reload"], check=True)


def backups_deploy_file(work: Path, cluster: str) -> Path:
    """A deploy.py running install_backups alone against ``cluster`` on PORT."""
    deploy = work / "deploy.py"
    deploy.write_text(
        "from types import SimpleNamespace\n"
        "from donnadb.provision.backups import install_backups\n"
        f"install_backups(SimpleNamespace(donnadb_install_dir='/srv/donnadb', pg_version=15,\n"
        "                                db_passfile='/etc/donnadb/pgpass',\n"
        f"                                pg_cluster='{cluster}', pg_port={PORT}, ha=None))\n")
    return deploy


def test_deploy_configures_archiving_and_the_stanza(throwaway_cluster, schedule_target,
                                                    tls_s3):
    """repo1 here and repo2 in the bucket (moto over TLS), encrypted with a passphrase
    the deploy made; a second run changes nothing."""
    name, work = throwaway_cluster
    endpoint, _ = tls_s3
    deploy = backups_deploy_file(work, name)
    include = work / "pgbr" / "conf.d"
    include.mkdir(parents=True)
    # moto takes any key; "shared" keys are the operator's file (an instance role needs none)
    (include / pitr.S3_KEY_FILE).write_text("[global]\nrepo2-s3-key=testing\n"
                                            "repo2-s3-key-secret=testing\n")
    prefix = f"deploy-{uuid.uuid4().hex[:8]}/"
    data = {
        "backup_repo_dir": work / "repo", "backup_env_file": work / "etc" / "backup.env",
        "pgbackrest_config": work / "pgbr" / "pgbackrest.conf",
        "pgbackrest_include_path": include,
        "pgbackrest_repo_path": work / "pgbr-repo", "pgbackrest_stanza": "deploytest",
        "backup_s3": json.dumps({"bucket": TLS_BUCKET, "prefix": prefix,
                                 "endpoint_url": endpoint.url,
                                 "ca_file": str(endpoint.ca_file)}),
        "pgbackrest_s3_key_type": "shared",
        **schedule_target,
    }
    cmd = [str(Path(sys.executable).with_name("pyinfra")), "-y", "@local", str(deploy)]
    for key, value in data.items():
        cmd += ["--data", f"{key}={value}"]

    first = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert (work / "repo").stat().st_mode & 0o7777 == 0o2750
    assert "PGBACKREST_ENABLED=true" in (work / "etc" / "backup.env").read_text()
    prefix = data.get("backup_unit_prefix", UNIT_PREFIX)
    for job in ("physical-full", "physical-diff"):
        assert (Path(data["backup_unit_dir"]) / f"{prefix}{job}.timer").exists()
    if systemd_running():
        assert not (work / "cron").exists()
        for job in ("physical-full", "physical-diff", "snapshot"):
            timer = unit_properties(f"{prefix}{job}.timer", "LoadState", "UnitFileState",
                                    "ActiveState")
            assert timer == {"LoadState": "loaded", "UnitFileState": "enabled",
                             "ActiveState": "active"}, (job, timer)
    else:
        assert "/srv/donnadb/bin/donna-backup physical-full" in (work / "cron").read_text()
    assert superuser_psql("SHOW archive_mode", port=PORT) == "on"

    cluster = pitr.Cluster(15, name, PORT, Path(f"/var/lib/postgresql/15/{name}"))
    engine = pitr.Engine(work / "pgbr" / "pgbackrest.conf", "deploytest", cluster,
                         include=include, repos=(1, 2))
    report = pitr.check(engine)
    assert report["ok"], report
    # The deploy took a first full backup into each repository: PITR works from now on.
    assert {repo: seen["backups"] for repo, seen in report["repos"].items()} == \
        {"1": 1, "2": 1}
    cipher = include / pitr.CIPHER_FILE
    st = cipher.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, pwd.getpwnam("postgres").pw_uid)
    passphrase = cipher.read_text().split("repo2-cipher-pass=", 1)[1].strip()
    assert passphrase not in first.stdout + first.stderr
    assert passphrase not in (work / "pgbr" / "pgbackrest.conf").read_text()

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False)
    assert again.returncode == 0
    second = DeployRun(again.returncode, again.stdout + again.stderr)
    assert second.totals["changed"] == 0, second.changed_operations()
    # second run: nothing changed, so the cluster is not restarted again
    [row] = [ln for ln in (again.stdout + again.stderr).splitlines()
             if "Restart cluster" in ln and not ln.lstrip().startswith("-->")]
    assert re.search(r"\s1\s+-\s+-\s+1\s*$", row), row


def test_deploy_writes_the_age_recipients_once(throwaway_cluster, schedule_target):
    name, work = throwaway_cluster
    deploy = backups_deploy_file(work, name)
    recipients = work / "etc" / "age-recipients.txt"
    env_file = work / "etc" / "backup.env"
    # pgBackRest off: its defaults are the deployed host's own config and repository.
    data = {"backup_repo_dir": work / "repo", "backup_env_file": env_file,
            "backup_age_recipients_file": recipients, "pgbackrest_enabled": "false",
            **schedule_target}

    def run(keys):
        cmd = [str(Path(sys.executable).with_name("pyinfra")), "-y", "@local", str(deploy),
               "--data", f"backup_age_recipients={json.dumps(keys)}"]
        for key, value in data.items():
            cmd += ["--data", f"{key}={value}"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        return DeployRun(done.returncode, done.stdout + done.stderr)

    run([AGE_PUBLIC])
    assert shutil.which("age")
    assert AGE_PUBLIC in recipients.read_text().splitlines()
    st = recipients.stat()
    assert (st.st_mode & 0o777, st.st_uid, grp.getgrgid(st.st_gid).gr_name) == (0o640, 0,
                                                                               "postgres")
    assert f"BACKUP_AGE_RECIPIENTS_FILE={recipients}\n" in env_file.read_text()
    again = run([AGE_PUBLIC])
    assert again.totals["changed"] == 0, again.changed_operations()
    # the recipients taken away: the file and its setting go, backups are no longer age's
    run([])
    assert not recipients.exists() and "BACKUP_AGE" not in env_file.read_text()
