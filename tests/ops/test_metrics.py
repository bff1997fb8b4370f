"""`donnactl metrics`: the exposition, the textfile and the HTTP server."""

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from donnadb.ops import metrics
from tests.ops.conftest import DONNACTL
from tests.support import full_disk, one_line_error


def _samples(text: str) -> dict[str, float]:
    return {s.name + (str(sorted(s.labels.items())) if s.labels else ""): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_exposition_has_the_status_figures(settings):
    samples = _samples(metrics.exposition(settings))
    assert samples["donnadb_up"] == 1
    for name in ("donnadb_connections_used_ratio", "donnadb_partitions_ahead",
                 "donnadb_xid_wraparound_ratio", "donnadb_longest_query_seconds",
                 "donnadb_partition_default_rows"):
        assert name in samples
    assert any(k.startswith("donnadb_health_status[('check', 'connections')]") for k in samples)


def test_database_down_exports_up_0(cli):
    done = cli("metrics", env={"DB_PORT": "1"})
    assert done.returncode == 0
    samples = _samples(done.stdout)
    assert samples["donnadb_up"] == 0 and "donnadb_connections_used_ratio" not in samples


def test_textfile_is_written_atomically(cli, tmp_path):
    target = tmp_path / "donnadb.prom"
    done = cli("metrics", "textfile", str(target))
    assert done.returncode == 0, done.stderr
    assert _samples(target.read_text())["donnadb_up"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_host_only_writes_this_hosts_figures_and_never_reads_the_database(cli, tmp_path):
    """An application host's metrics job: its storage phases and dual-write figures, no
    `donnadb_up` (there is no database to be down), whatever DB_* say."""
    from donnadb.dal.mirrorstats import MirrorStats

    stats = MirrorStats(tmp_path / "stats")
    stats.copied("write_log", 0.003)
    stats.queued(["write_log"])
    stats.close()
    target = tmp_path / "donnadb.prom"
    done = cli("metrics", "textfile", "--host-only", str(target), "--json",
               env={"DB_PORT": "1", "DB_PASSFILE": str(tmp_path / "none"),
                    "DATA_DIR": str(tmp_path / "data"), "DATA_STORAGE_LOGS": "dual",
                    "MIGRATION_MIRROR_STATS_DIR": str(tmp_path / "stats")}, timeout=20)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["families"] == [
        "donnadb_mirror_copies", "donnadb_mirror_copy_seconds", "donnadb_mirror_failures",
        "donnadb_reconcile_backlog", "donnadb_reconcile_oldest_seconds",
        "donnadb_storage_phase"]
    samples = _samples(target.read_text())
    assert samples["donnadb_mirror_failures_total[('entity', 'logs')]"] == 1
    assert samples["donnadb_storage_phase[('entity', 'logs'), ('phase', 'dual')]"] == 1
    assert not [name for name in samples if name.startswith("donnadb_up")]


def test_a_full_disk_keeps_the_last_textfile_whole(cli, tmp_path):
    last = "donnadb_up 1\n"
    with full_disk(tmp_path, {"donnadb.prom": last}) as disk:
        target = disk / "donnadb.prom"
        done = cli("metrics", "textfile", str(target))
        one_line_error(done, 1, f"cannot write {target}: No space left on device",
                       "free space")
        assert target.read_text() == last
        assert sorted(p.name for p in disk.iterdir()) == ["donnadb.prom", "filler"]


def test_serve_answers_scrapes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([DONNACTL, "metrics", "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/bin:/bin", "OPS_LOG_FILE": str(tmp_path / "l")})
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None, "metrics server did not start"
        assert _samples(body)["donnadb_up"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_volume_info_names_the_data_and_wal_mount_points(settings):
    samples = _samples(metrics.exposition(settings))
    volumes = {k for k in samples if k.startswith("donnadb_volume_info")}
    assert len(volumes) == 2 and all("'mountpoint', '/" in k for k in volumes), volumes


def test_mountpoint_is_the_longest_mount_that_holds_the_path():
    mounts = ["/", "/var", "/var/lib/postgresql", "/var/lib/postgresql-old"]
    assert metrics.mountpoint(Path("/var/lib/postgresql/15/main"), mounts) \
        == "/var/lib/postgresql"
    assert metrics.mountpoint(Path("/var/lib/postgresql"), mounts) == "/var/lib/postgresql"
    assert metrics.mountpoint(Path("/srv/wal"), mounts) == "/"


def test_pgbouncer_gauges_only_when_configured(settings):
    assert "donnadb_pgbouncer_up" not in _samples(metrics.exposition(
        settings.model_copy(update={"pgbouncer_port": None})))
    down = _samples(metrics.exposition(settings.model_copy(update={"pgbouncer_port": 1})))
    assert down["donnadb_pgbouncer_up"] == 0 and down["donnadb_up"] == 1
