"""Where the scheduled jobs go on each kind of host (donnadb/provision/scheduler.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from donnadb.provision import backups, opsjobs
from tests.provision.deployrun import PYINFRA, ROOT
from tests.support import with_systemd

CALENDARS = sorted({*(on for on, _, _ in backups.DEFAULT_SCHEDULE.values()),
                    *(on for on, _, _ in backups.PHYSICAL_SCHEDULE.values()),
                    *(job.on_calendar for job in opsjobs.DEFAULT_JOBS.values())})

DEPLOY = """\
from donnadb.provision.scheduler import install_jobs
install_jobs(label="probe", prefix="donna-schedtest-", unit_dir={unit_dir!r},
             units={{"x": ("[Service]\\nExecStart=/bin/true\\n",
                           "[Timer]\\nOnCalendar={calendar}\\n")}},
             removed=[], cron_file={cron!r}, cron_text="")
"""


def _deploy(tmp_path, unit_dir, calendar="daily") -> subprocess.CompletedProcess:
    deploy = tmp_path / "deploy.py"
    deploy.write_text(DEPLOY.format(unit_dir=str(unit_dir), cron=str(tmp_path / "cron"),
                                    calendar=calendar))
    return subprocess.run([str(PYINFRA), "-y", "@local", str(deploy)], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=300)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("calendar", CALENDARS)
def test_every_default_schedule_is_a_calendar_systemd_accepts(calendar):
    done = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr


@with_systemd
def test_a_calendar_systemd_refuses_stops_the_deploy_before_any_change(tmp_path):
    done = _deploy(tmp_path, "/etc/systemd/system", calendar="Sun..Fri *-*-* 01:00:00")
    assert done.returncode != 0
    assert "is refused by `systemd-analyze calendar`" in done.stdout + done.stderr
    assert not list(Path("/etc/systemd/system").glob("donna-schedtest-*"))


@with_systemd
def test_units_where_systemd_never_looks_are_refused(tmp_path):
    # A timer systemd cannot load would never fire: the deploy stops with the reason.
    done = _deploy(tmp_path, tmp_path / "units")
    assert done.returncode != 0
    assert "which systemd does not load units from" in done.stdout + done.stderr
    assert not (tmp_path / "units").exists()
