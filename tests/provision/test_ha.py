"""The cluster deploy's files, rendered from group_data as the deploy renders them:
what Patroni, etcd and HAProxy are told, and what the deploy refuses before running.

The cluster itself runs in the fleet suite (tests/fleet/ha/, ``make test-hosts``).
"""

from __future__ import annotations

import datetime as dt
import json
import stat
from types import SimpleNamespace

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from donnadb.errors import ConfigError
from donnadb.provision import ca, etcd, ha, haproxy, patroni
from donnadb.provision.backups import load_backup_deploy
from donnadb.provision.settings import load_deploy_settings
from tests.provision.deployrun import load_group_data
from tests.support import GroupData

ADDRESSES = {"db1": "10.0.1.11", "db2": "10.0.1.12", "db3": "10.0.1.13"}


def data(**extra) -> GroupData:
    return GroupData({**load_group_data(), "ha": True, "host_memory_mb": 2048,
                      "host_cpus": 1, **extra})


def inventory(tmp_path, addresses: dict[str, str] = ADDRESSES):
    hosts = {}
    for name, address in addresses.items():
        hosts[name] = SimpleNamespace(name=name, data=data(
            db_host=address, pg_listen_addresses=address, tls_ca_dir=str(tmp_path)))
    group = list(hosts.values())
    inv = SimpleNamespace(groups={ha.DB_GROUP: group}, get_group=lambda name: group,
                          get_host=hosts.__getitem__)
    for host in group:
        host.inventory = inv
    return hosts


def test_ha_is_off_by_default_and_its_settings_are_checked():
    assert load_deploy_settings(GroupData(load_group_data())).ha is None
    on = load_deploy_settings(data(ha_synchronous_mode_strict=True, ha_ttl=20))
    assert on.ha.synchronous_mode_strict is True and on.ha.ttl == 20
    assert on.ha.service_name == "donna-db"
    for bad, match in (({"ha_ttl": 0}, "positive"), ({"ha_ttl": "30"}, "positive"),
                       ({"ha_synchronous_mode_strict": "yes"}, "True or False"),
                       ({"ha_service_name": "Bad Name"}, "DNS label")):
        with pytest.raises(ConfigError, match=match):
            load_deploy_settings(data(**bad))


def test_a_cluster_needs_an_odd_number_of_members_at_their_own_addresses(tmp_path):
    assert [m.name for m in ha.members(inventory(tmp_path)["db1"])] == ["db1", "db2", "db3"]
    for addresses in ({"db1": "10.0.0.1", "db2": "10.0.0.2"},
                      {**ADDRESSES, "db4": "10.0.1.14"}):
        with pytest.raises(ConfigError, match="odd number"):
            ha.members(inventory(tmp_path, addresses)["db1"])
    with pytest.raises(ConfigError, match="its own address"):
        ha.members(inventory(tmp_path, {**ADDRESSES, "db3": "10.0.1.11"})["db1"])


def test_patroni_gets_sync_replication_rewind_tls_and_an_authenticated_api(tmp_path):
    host = inventory(tmp_path)["db2"]
    settings = load_deploy_settings(host.data)
    secrets = ha.cluster_secrets(settings)
    text = patroni.render_config(settings, host, secrets)
    conf = yaml.safe_load(text)
    dcs = conf["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    assert dcs["postgresql"]["use_pg_rewind"] is True and dcs["postgresql"]["use_slots"]
    assert dcs["postgresql"]["parameters"]["max_connections"] == settings.pg_max_connections
    assert conf["name"] == "db2" and conf["scope"] == "donna"
    api = conf["restapi"]
    assert api["listen"] == "10.0.1.12:8008" and api["certfile"].endswith("server.crt")
    assert api["authentication"] == {"username": "patroni", "password": secrets["restapi"]}
    # The v2 client: Patroni 3.0.2's etcd3 client may overwrite a new leader's lock.
    assert "etcd3" not in conf
    assert conf["etcd"]["protocol"] == "https" and conf["etcd"]["cert"]
    assert conf["etcd"]["hosts"] == [f"{a}:2379" for a in ADDRESSES.values()]
    pg = conf["postgresql"]
    assert pg["custom_conf"] == "/etc/postgresql/15/main/conf.d/donna.conf"
    # Not Patroni's default path, which it appends its own bootstrap lines to.
    assert pg["parameters"]["hba_file"] == "/etc/postgresql/15/main/donna-pg_hba.conf"
    for kind in ("replication", "rewind"):
        assert pg["authentication"][kind]["sslmode"] == "verify-full"
    assert {"auth-local": "peer"} in conf["bootstrap"]["initdb"]
    assert "trust" not in text and "md5" not in text
    strict = load_deploy_settings(data(ha_synchronous_mode_strict=True,
                                       db_host="10.0.1.12", tls_ca_dir=str(tmp_path)))
    strict_conf = yaml.safe_load(patroni.render_config(strict, host, secrets))
    assert strict_conf["bootstrap"]["dcs"]["synchronous_mode_strict"] is True


def test_the_cluster_secrets_are_made_once_and_kept_private(tmp_path):
    settings = load_deploy_settings(data(tls_ca_dir=str(tmp_path)))
    first = ha.cluster_secrets(settings)
    assert set(first) == set(ha.SECRET_NAMES) and len(set(first.values())) == 3
    assert ha.cluster_secrets(settings) == first
    path = tmp_path / "cluster" / "donna.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the cluster secrets"):
        ha.cluster_secrets(settings)


def test_etcd_listens_on_tls_only_and_asks_for_certificates(tmp_path):
    host = inventory(tmp_path)["db3"]
    env = dict(line.split("=", 1) for line in etcd.render_env(
        load_deploy_settings(host.data), host).splitlines() if "=" in line
        and not line.startswith("#"))
    assert env["ETCD_NAME"] == "db3"
    urls = [v for k, v in env.items() if k.endswith("_URLS") or k == "ETCD_INITIAL_CLUSTER"]
    assert urls and all("http://" not in v and "https://" in v for v in urls)
    assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    assert env["ETCD_INITIAL_CLUSTER"].count("https://10.0.1.1") == 3
    assert env["ETCD_TRUSTED_CA_FILE"] == env["ETCD_PEER_TRUSTED_CA_FILE"] == etcd.CA


def test_haproxy_routes_by_patronis_verified_health_checks(tmp_path):
    host = inventory(tmp_path)["db1"]
    text = haproxy.render_config(load_deploy_settings(host.data), host, "10.0.2.21")
    assert "bind 10.0.2.21:5000" in text and "bind 10.0.2.21:5001" in text
    assert "uri /primary" in text and "uri /replica?lag=1048576" in text
    assert text.count("check-ssl verify required ca-file /etc/donnadb/tls/ca.crt") == 2
    assert text.count("on-marked-down shutdown-sessions") == 2
    for address in ADDRESSES.values():
        assert text.count(f"{address}:6432") == 2
    # Each member's own PgBouncer port, not the first member's for all.
    hosts = inventory(tmp_path)
    hosts["db3"].data["pgbouncer_port"] = 6543
    text = haproxy.render_config(load_deploy_settings(hosts["db1"].data), hosts["db1"],
                                 "10.0.2.21")
    assert text.count("10.0.1.13:6543") == 2 and text.count("10.0.1.11:6432") == 2


def test_a_hosts_certificate_serves_and_authenticates_and_old_ones_are_reissued():
    authority = ca.new_ca()
    issued = x509.load_pem_x509_certificate(ca.issue(authority, ["db1"]).cert_pem.encode())
    usages = issued.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ca.needs_reissue(issued, authority, ["db1"]) is None
    # A certificate made before clusters existed (serverAuth only) is issued again.
    now = dt.datetime.now(dt.UTC)
    old = (x509.CertificateBuilder().subject_name(issued.subject)
           .issuer_name(authority.cert.subject).public_key(issued.public_key())
           .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=90))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("db1")]), critical=False)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                          critical=False)
           .sign(authority.key, ca.hashes.SHA256()))
    assert ca.needs_reissue(old, authority, ["db1"]) == "its key usages changed"


def test_the_cluster_name_is_in_every_members_certificate(tmp_path):
    from donnadb.provision import tls
    settings = load_deploy_settings(data(db_host="10.0.1.11"))
    assert "donna-db" in tls.server_names(settings, "db1", "db1")
    single = load_deploy_settings(GroupData(load_group_data()))
    assert "donna-db" not in tls.server_names(single, "db1", "db1")


def test_pg_hba_lets_the_members_replicate_and_rewind_over_tls_only():
    from donnadb.provision import bootstrap, hba
    settings = load_deploy_settings(data())
    peers = [f"{a}/32" for a in ADDRESSES.values()]
    text = bootstrap.render("pg_hba.conf.j2", networks=[], local_only=[], own_addresses=[],
                            app="donna_app", app_direct_networks=[], peers=peers,
                            replication_user=ha.REPLICATION_USER, rewind_user=ha.REWIND_USER)
    lines = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    replication = [line for line in lines if line[1] == "replication" and line[0] != "local"]
    assert [line[3] for line in replication] == peers
    assert all(line[0] == "hostssl" and line[-1] == "scram-sha-256" for line in replication)
    assert hba.own_addresses(settings)  # the single-host lines are unchanged
    assert json.dumps(lines).count("trust") == 0


BUCKET = {"bucket": "donna-backups", "endpoint_url": "https://s3.example.net:9000",
          "ca_file": "/etc/donnadb/s3-ca.crt"}


def test_pgbackrest_on_a_cluster_needs_the_shared_bucket_before_anything_changes():
    """A member's own disk is no repository for the cluster: without a bucket, the
    default is off and asking for it is refused at load, not half-deployed."""
    bare = data()
    assert not load_backup_deploy(bare, load_deploy_settings(bare)).pgbackrest
    cluster = data(pgbackrest_enabled=True)
    with pytest.raises(ConfigError, match="needs a bucket in backup_s3"):
        load_backup_deploy(cluster, load_deploy_settings(cluster))
    shared = data(backup_s3=BUCKET)
    cfg = load_backup_deploy(shared, load_deploy_settings(shared))
    assert cfg.pgbackrest and cfg.pgbackrest_s3.bucket == "donna-backups"
    assert cfg.env["PGBACKREST_LOCAL_REPO"] == "false"
    single = GroupData({**load_group_data(), "pgbackrest_enabled": True})
    assert load_backup_deploy(single, load_deploy_settings(single)).pgbackrest


def test_a_members_stanza_reaches_the_others_by_tls_and_shares_the_s3_repository(tmp_path):
    from donnadb.backup import pitr
    from donnadb.provision import backups, tls
    hosts = inventory(tmp_path)
    for host in hosts.values():
        host.data = GroupData({**host.data, "backup_s3": BUCKET})
    me = hosts["db2"]
    settings = load_deploy_settings(me.data)
    cfg = load_backup_deploy(me.data, settings)
    engine = backups.engine_of(cfg, settings)
    assert engine.repos == (2,)
    text = pitr.config_text(stanza="donna", repo_path=None, cluster=engine.cluster,
                            s3=cfg.pgbackrest_s3, peers=backups.member_peers(settings, me))
    options = [line.split("=", 1) for line in text.splitlines() if "=" in line]
    names = [k for k, _ in options]
    assert not any(k.startswith("repo1-") for k in names) and "repo2-type" in names
    values = dict(options)
    # The other members by name (pgBackRest checks DNS entries), over TLS.
    assert (values["pg2-host"], values["pg3-host"]) == ("db1", "db3")
    assert values["pg2-host-type"] == values["pg3-host-type"] == "tls"
    assert values["pg2-host-cert-file"] == tls.SERVER_CERT
    assert values["tls-server-address"] == "10.0.1.12"
    assert [v for k, v in options if k == "tls-server-auth"] == \
        [f"{a}=donna" for a in ADDRESSES.values()]
    # Patroni archives into it.
    conf = yaml.safe_load(patroni.render_config(settings, me, ha.cluster_secrets(settings)))
    parameters = conf["postgresql"]["parameters"]
    assert parameters["archive_mode"] == "on"
    assert parameters["archive_command"] == pitr.archive_command(engine)
    assert "archive_mode" not in yaml.safe_load(patroni.render_config(
        load_deploy_settings(data(db_host="10.0.1.11", tls_ca_dir=str(tmp_path))),
        inventory(tmp_path)["db1"], ha.cluster_secrets(settings)))["postgresql"]["parameters"]


def test_members_named_by_their_address_are_refused_for_pgbackrest(tmp_path):
    from donnadb.provision import backups
    hosts = inventory(tmp_path, {"10.0.1.11": "10.0.1.11", "10.0.1.12": "10.0.1.12",
                                 "10.0.1.13": "10.0.1.13"})
    me = hosts["10.0.1.11"]
    with pytest.raises(ConfigError, match="named by its address"):
        backups.member_peers(load_deploy_settings(me.data), me)
