"""The scheduled ops jobs: schedules from group_data, units and the cron fallback."""

from __future__ import annotations

import stat
import subprocess
import time
from pathlib import Path

import pytest

from donnadb.config import Settings
from donnadb.errors import ConfigError
from donnadb.provision import opsjobs
from donnadb.provision.settings import load_deploy_settings
from tests.provision.deployrun import ROOT, load_group_data
from tests.support import unit_properties, with_systemd, without_systemd


class _Data(dict):
    def get(self, key, default=None):
        return super().get(key, default)


@pytest.fixture(scope="module")
def group_data():
    return _Data(load_group_data())


def test_group_data_schedules_every_job(group_data):
    jobs, dropped = opsjobs.load_jobs(group_data)
    assert set(jobs) == {"partitions", "retention", "metrics"} and dropped == []
    assert jobs["metrics"].cron == "* * * * *"
    assert jobs["retention"].args == ("retention", "run", "--yes", "--json")


def test_a_job_can_be_left_out_or_moved(group_data):
    data = _Data(group_data, ops_schedule={"metrics": None,
                                           "retention": ("*-*-* 05:00:00", "0 5 * * *")})
    jobs, dropped = opsjobs.load_jobs(data)
    assert "metrics" not in jobs and dropped == ["metrics"]
    assert (jobs["retention"].on_calendar, jobs["retention"].cron) == ("*-*-* 05:00:00",
                                                                       "0 5 * * *")


@pytest.mark.parametrize("schedule,match", [
    ({"vacuum": ("daily", "0 1 * * *")}, "unknown job 'vacuum'"),
    ({"metrics": ("* * * * *",)}, r"ops_schedule\['metrics'\]"),
    ({"metrics": ("minutely", "* * *")}, r"ops_schedule\['metrics'\]"),
])
def test_bad_schedules_are_refused(group_data, schedule, match):
    with pytest.raises(ConfigError, match=match):
        opsjobs.load_jobs(_Data(group_data, ops_schedule=schedule))


def test_units_and_cron_run_the_installed_donnactl_as_the_ops_user(group_data):
    settings = load_deploy_settings(group_data)
    jobs, _ = opsjobs.load_jobs(group_data)
    donnactl = f"{settings.donnadb_install_dir}/venv/bin/donnactl"
    unit = opsjobs.service_unit(settings, jobs["partitions"])
    assert f"ExecStart={donnactl} partitions maintain --yes --json\n" in unit
    assert str(ROOT) not in unit and str(ROOT) not in opsjobs.cron_text(settings, jobs)
    for line in ("User=donna-ops", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "PrivateTmp=yes", "OnFailure=donna-job-failed@%n.service",
                 "Environment=DB_PASSFILE=/etc/donnadb/pgpass.d/donna-ops"):
        assert f"{line}\n" in unit, line
    assert "OnCalendar=*-*-* *:*:00\n" in opsjobs.timer_unit(jobs["metrics"])
    assert "RandomizedDelaySec=0\n" in opsjobs.timer_unit(jobs["metrics"])
    cron = opsjobs.cron_text(settings, jobs)
    assert (f"40 1 * * * donna-ops cd / && flock -n /run/lock/donna-ops-retention.lock "
            f"{donnactl} retention run --yes --json >>") in cron
    assert "%" not in cron  # cron would turn it into a newline


def test_an_app_hosts_metrics_job_writes_its_own_figures_without_a_login(group_data):
    """The metrics job of a host without a database: `--host-only` to the textfile
    node_exporter reads, as donna-ops with no passfile (it has none there)."""
    settings = load_deploy_settings(group_data)
    jobs, _ = opsjobs.load_jobs(group_data)
    job = opsjobs.host_metrics_job(settings, jobs["metrics"])
    donnactl = f"{settings.donnadb_install_dir}/venv/bin/donnactl"
    unit = opsjobs.service_unit(settings, job, login=False)
    assert (f"ExecStart={donnactl} metrics textfile --host-only "
            "/var/lib/prometheus/node-exporter/donnadb.prom\n") in unit
    for line in ("User=donna-ops", "ProtectSystem=strict", "Environment=OPS_LOG_FILE="
                 "/var/log/donnadb/donna-ops.jsonl",
                 "ReadWritePaths=/var/lib/prometheus/node-exporter /var/log/donnadb"):
        assert f"{line}\n" in unit, line
    cron = opsjobs.cron_text(settings, {"metrics": job}, login=False)
    for text in (unit, cron):
        assert "DB_PASSFILE" not in text and "SCHEMA_DIR" not in text
    assert opsjobs.timer_unit(job) == opsjobs.timer_unit(jobs["metrics"]).replace(
        jobs["metrics"].what, job.what)
    moved = load_deploy_settings(_Data(group_data, ops_env={
        **group_data["ops_env"], "METRICS_TEXTFILE": "/srv/metrics/donnadb.prom"}))
    assert opsjobs.host_metrics_job(moved, jobs["metrics"]).args[-1] == \
        "/srv/metrics/donnadb.prom"


@pytest.mark.parametrize("job", sorted(opsjobs.DEFAULT_JOBS) + ["host metrics"])
def test_every_job_is_a_real_donnactl_command(job, group_data):
    args = opsjobs.DEFAULT_JOBS[job].args if job in opsjobs.DEFAULT_JOBS else \
        opsjobs.host_metrics_job(load_deploy_settings(group_data),
                                 opsjobs.DEFAULT_JOBS["metrics"]).args
    words = [a for a in args if not a.startswith("-")]
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "donnactl"), *words, "--help"],
                          capture_output=True, text=True, check=False, cwd="/",
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    for flag in (a for a in args if a.startswith("--")):
        assert flag in done.stdout, (job, flag)


def test_ops_env_names_must_be_runtime_settings(group_data):
    with pytest.raises(ConfigError, match="HEALTH_BLOT_WARN_PCT is not a setting"):
        load_deploy_settings(_Data(group_data, ops_env={"HEALTH_BLOT_WARN_PCT": 1}))


@pytest.mark.deploy
def test_deploy_installs_the_units_and_the_textfile_directory(deployed, group_data):
    settings = load_deploy_settings(group_data)
    jobs, _ = opsjobs.load_jobs(group_data)
    for name in jobs:
        for kind in ("service", "timer"):
            assert Path(f"{opsjobs.UNIT_DIR}/donna-ops-{name}.{kind}").is_file()
    assert Path(opsjobs.textfile_dir(settings)).is_dir()
    # Others may enter the log directory, not list it; each log is its writer's alone.
    assert stat.S_IMODE(Path(opsjobs.LOG_DIR).stat().st_mode) == 0o711
    for log in (opsjobs.CRON_LOG, opsjobs.JOB_LOG):
        assert stat.S_IMODE(Path(log).stat().st_mode) == 0o600, log


@pytest.mark.deploy
@without_systemd
def test_without_systemd_the_cron_file_is_the_schedule(deployed, group_data):
    settings = load_deploy_settings(group_data)
    jobs, _ = opsjobs.load_jobs(group_data)
    cron = Path(opsjobs.CRON_FILE)
    assert cron.read_text() == opsjobs.cron_text(settings, jobs)
    assert stat.S_IMODE(cron.stat().st_mode) == 0o644 and cron.stat().st_uid == 0


def _timer_when_idle(unit: str) -> dict[str, str]:
    """The timer's properties once its service is not running (a running job's timer has
    no next elapse yet: the per-minute metrics job is often caught running)."""
    for _ in range(120):
        timer = unit_properties(f"{unit}.timer", "LoadState", "UnitFileState", "ActiveState",
                                "NextElapseUSecRealtime")
        if timer["NextElapseUSecRealtime"]:
            break
        time.sleep(0.5)
    return timer


@pytest.mark.deploy
@with_systemd
def test_with_systemd_the_timers_are_loaded_enabled_and_waiting(deployed, group_data):
    jobs, _ = opsjobs.load_jobs(group_data)
    assert not Path(opsjobs.CRON_FILE).exists(), "a cron copy would run every job twice"
    for name in jobs:
        timer = _timer_when_idle(f"donna-ops-{name}")
        assert timer["LoadState"] == "loaded", (name, timer)
        assert timer["UnitFileState"] == "enabled", (name, timer)
        assert timer["ActiveState"] == "active", (name, timer)
        assert timer["NextElapseUSecRealtime"], (name, timer)


@pytest.mark.deploy
@with_systemd
def test_with_systemd_a_triggered_job_runs_and_writes_its_result(deployed, group_data):
    settings = load_deploy_settings(group_data)
    textfile = Path(settings.ops_env.get("METRICS_TEXTFILE")
                    or Settings.model_fields["metrics_textfile"].default)
    textfile.unlink(missing_ok=True)
    # What the timer does when it fires: start the service, here and now.
    subprocess.run(["systemctl", "start", "donna-ops-metrics.service"], check=True,
                   capture_output=True, timeout=120)
    service = unit_properties("donna-ops-metrics.service", "Result", "ExecMainStatus")
    assert service == {"Result": "success", "ExecMainStatus": "0"}, service
    assert "donnadb_up 1" in textfile.read_text()


@pytest.mark.deploy
def test_env_file_carries_pgbouncer_and_ops_settings(deployed, group_data):
    from donnadb.config import Settings

    env = Settings(_env_file="/etc/donnadb/donnadb.env")
    assert env.pgbouncer_port == group_data["pgbouncer_port"]
    for name, value in group_data["ops_env"].items():
        # The value as the runtime parses it (75 -> 75.0, "true" -> True).
        expected = getattr(Settings(_env_file=None, **{name.lower(): value}), name.lower())
        assert getattr(env, name.lower()) == expected, name


@pytest.mark.deploy
@without_systemd
def test_a_cron_daemon_runs_the_cron_files_without_systemd(deployed):
    # The cron.d files are the only schedule here: without a daemon they never fire.
    from donnadb.provision.scheduler import CRON_RUNNING_CMD

    state = subprocess.run(["sh", "-c", CRON_RUNNING_CMD], capture_output=True, text=True)
    assert state.stdout.strip() == "running"
