"""The owner role cannot get its code run by a superuser.

``donna_owner`` owns schema public (and the migrator acts as it). It plants functions
there that shadow catalog functions the superuser SQL calls (``format(text, name)`` is
a better match than ``pg_catalog.format(text, VARIADIC "any")``; ``to_regrole(text)``
wins when public comes first in the search_path), and tries to put public first for
the whole database. Then the deploy and a restore drill run their superuser SQL; each
planted function records ``current_user`` when it runs: never a superuser.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from donnadb.backup import restore, snapshot
from tests.provision.deployrun import run_deploy
from tests.support import superuser_psql

pytestmark = pytest.mark.deploy

PLANT = """
SET ROLE {owner};
CREATE TABLE public.{probe} (who text, via text);
GRANT INSERT ON public.{probe} TO PUBLIC;
CREATE FUNCTION public.format(text, name) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO public.{probe} VALUES (current_user, 'format');
    RETURN pg_catalog.format($1, $2);
END $f$;
CREATE FUNCTION public.to_regrole(text) RETURNS regrole LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO public.{probe} VALUES (current_user, 'to_regrole');
    RETURN pg_catalog.to_regrole($1);
END $f$;
"""
UNPLANT = """
DROP FUNCTION IF EXISTS public.format(text, name);
DROP FUNCTION IF EXISTS public.to_regrole(text);
DROP TABLE IF EXISTS public.{probe};
"""
RAN_AS_SUPERUSER = """
SELECT p.via || ' as ' || p.who FROM public.{probe} p
JOIN pg_roles r ON r.rolname = p.who WHERE r.rolsuper
"""


def _plant(settings, dbname: str, probe: str) -> None:
    superuser_psql(PLANT.format(owner=settings.db_role_owner, probe=probe), dbname=dbname)
    # The owner also tries to put its schema first for every session of the database.
    try:
        superuser_psql(f"SET ROLE {settings.db_role_owner};\n"
                       f'ALTER DATABASE "{dbname}" SET search_path = public, pg_catalog',
                       dbname=dbname)
    except subprocess.CalledProcessError as refused:
        assert "must be owner of database" in refused.stderr


@pytest.fixture
def planted_in_the_deployed_database(settings, deployed):
    probe = f"sec_probe_{uuid.uuid4().hex[:8]}"
    _plant(settings, settings.db_name, probe)
    yield probe
    superuser_psql(UNPLANT.format(probe=probe), dbname=settings.db_name)
    superuser_psql(f'ALTER DATABASE "{settings.db_name}" RESET search_path')


def test_the_deploy_never_runs_a_planted_function(settings, planted_in_the_deployed_database):
    probe = planted_in_the_deployed_database
    # Drift that makes the deploy re-apply its bootstrap, not only check it.
    superuser_psql(f'REVOKE TEMPORARY ON DATABASE "{settings.db_name}" '
                   f"FROM {settings.db_role_backup}")
    run = run_deploy()
    assert run.returncode == 0, run.output[-3000:]
    assert "Bootstrap" in " ".join(run.changed_operations())
    ran = superuser_psql(RAN_AS_SUPERUSER.format(probe=probe), dbname=settings.db_name)
    assert ran == "", f"planted function ran as a superuser: {ran}"
    setting = superuser_psql(
        "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d "
        f"ON d.oid = s.setdatabase WHERE d.datname = '{settings.db_name}' AND s.setrole = 0 "
        "AND array_to_string(s.setconfig, ',') LIKE '%search_path%'")
    assert setting == "0"


def test_a_restore_never_runs_a_planted_function(settings, bs, source_db, target_name):
    probe = f"sec_probe_{uuid.uuid4().hex[:8]}"
    _plant(settings, source_db, probe)
    backup = snapshot.create_backup(bs, dbname=source_db)
    restore.restore_backup(bs, backup, target_name)
    ran = superuser_psql(RAN_AS_SUPERUSER.format(probe=probe), dbname=target_name)
    assert ran == "", f"planted function ran as a superuser: {ran}"
