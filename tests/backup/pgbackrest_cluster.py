"""A throwaway cluster archiving to pgBackRest: repo1 in a scratch directory and,
given an S3 repository, repo2 there with the passphrase file the deploy would make."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from donnadb.backup import pitr
from donnadb.provision.backups import cipher_file_command
from tests.support import give_deploy_tls


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextmanager
def drill_cluster(port: int, s3: pitr.S3Repo | None = None, s3_keys: str = "",
                  data_dir: Path | None = None):
    """A new cluster on ``port`` archiving to its own pgBackRest repositories; dropped
    after. ``s3_keys``: the include file's repo2-s3-key lines (moto takes any);
    ``data_dir``: where its data go (default: Debian's)."""
    name = f"pitr{uuid.uuid4().hex[:6]}"
    # Not pytest's tmp_path: the postgres user must reach it (/tmp/pytest-of-root is 0700).
    work = Path(tempfile.mkdtemp(prefix=f"donna-{name}-", dir="/var/tmp"))  # noqa: S108
    shutil.chown(work, "postgres", "postgres")
    data_dir = data_dir or Path(f"/var/lib/postgresql/15/{name}")
    sh("pg_createcluster", "15", name, "-p", str(port), "-d", str(data_dir))
    give_deploy_tls(15, name)
    cluster = pitr.Cluster(15, name, port, data_dir)
    config, include = work / "pgbackrest.conf", work / "conf.d"
    include.mkdir(mode=0o750)
    shutil.chown(include, "postgres", "postgres")
    if s3 is not None:
        # The deploy's own command makes the passphrase file.
        sh("sh", "-c", cipher_file_command(str(include / pitr.CIPHER_FILE)))
        keys = include / pitr.S3_KEY_FILE
        keys.write_text(f"[global]\n{s3_keys}")
        keys.chmod(0o600)
        shutil.chown(keys, "postgres", "postgres")
    eng = pitr.Engine(config, "drill", cluster, include=include,
                      repos=(1, 2) if s3 else (1,))
    config.write_text(pitr.config_text(stanza="drill", repo_path=work / "repo", cluster=cluster,
                                       log_path=work, lock_path=work / "lock", s3=s3))
    shutil.chown(config, "postgres", "postgres")
    (cluster.conf_dir / "conf.d" / "archive.conf").write_text(pitr.archive_conf_text(eng))
    sh("pg_ctlcluster", "15", name, "start")
    try:
        yield eng, work
    finally:
        for d in work.glob("copy*"):
            if (d / "postmaster.pid").exists():
                subprocess.run(["runuser", "-u", "postgres", "--",
                                str(cluster.bin_dir / "pg_ctl"), "-D", str(d), "-m",
                                "immediate", "stop"], capture_output=True, check=False)
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True,
                       check=False)
        for aside in cluster.data_dir.parent.glob(f"{name}.before-pitr-*"):
            shutil.rmtree(aside, ignore_errors=True)
        # pg_dropcluster leaves the config directory when it holds our conf.d/archive.conf.
        shutil.rmtree(cluster.conf_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
