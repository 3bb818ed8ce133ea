"""``cpctl dev``'s machinery without Docker or a cluster: the dev.json record, process
recognition, the layout of ports and command lines (HTTPS by default), the cluster CA and server
certificate, tokens, the cpctl config, and ``up`` cleaning up after itself."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from controlplane import dev as devlib
from controlplane.devproc import DevError, DevState, Proc, missing_ancestors, port_free_everywhere, wait_until
from controlplane.devtls import write_dev_tls


def _state(tmp_path: Path) -> DevState:
    procs = [Proc("etcd", ["/usr/bin/etcd", "--name", "dev"], str(tmp_path / "logs" / "etcd.log"), pid=12345)]
    return DevState(state_dir=tmp_path, cluster="c1", server="http://127.0.0.1:7070", admin_token="tok",
                    etcd_url="http://127.0.0.1:2379", machines=["m1"], procs=procs, config_path="/x/config.yaml",
                    config_backup="/x/backup.yaml", config_written="server: x\n", created_dirs=["/x"],
                    ca="/x/tls/ca.crt")


def test_state_round_trips_through_a_private_file(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.save()
    assert stat.S_IMODE(os.stat(tmp_path / "dev.json").st_mode) == 0o600
    assert DevState.load(tmp_path) == state


def test_no_state_is_none_and_a_broken_one_is_an_error(tmp_path: Path) -> None:
    assert DevState.load(tmp_path) is None
    (tmp_path / "dev.json").write_text("{not json")
    with pytest.raises(DevError, match="unreadable"):
        DevState.load(tmp_path)


def test_a_recycled_pid_is_not_our_process(tmp_path: Path) -> None:
    # this very process runs, but not the recorded command line: never signal it
    assert not Proc("etcd", ["/usr/bin/etcd"], str(tmp_path / "x.log"), pid=os.getpid()).alive()
    assert not Proc("etcd", ["/usr/bin/etcd"], str(tmp_path / "x.log")).alive()


def test_a_started_process_is_alive_until_stopped(tmp_path: Path) -> None:
    proc = Proc("sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
                str(tmp_path / "logs" / "sleeper.log"))
    proc.start()
    try:
        assert proc.pid > 0 and proc.alive()
        wait_until("the sleeper's first line", lambda: proc.log_tail() == "up", [proc], 10)
    finally:
        proc.stop(timeout=5)
    assert not proc.alive()
    assert proc.log_tail() == "up"


def test_missing_ancestors_deepest_first(tmp_path: Path) -> None:
    assert missing_ancestors(tmp_path / "a" / "b") == [str(tmp_path / "a" / "b"), str(tmp_path / "a")]
    assert missing_ancestors(tmp_path) == []


def test_a_taken_port_is_not_picked() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picked = port_free_everywhere(port, ["127.0.0.1"])
    assert picked != port and picked > 0


def test_tokens_one_admin_and_one_bound_node_token_per_machine(tmp_path: Path) -> None:
    admin = devlib._write_tokens(tmp_path, ["m1", "m2"])
    rows = (tmp_path / "tokens.csv").read_text().splitlines()
    assert rows[0] == f"{admin},admin,admin"
    for row, machine in zip(rows[1:], ["m1", "m2"], strict=True):
        token, user, role, bound = row.split(",")
        assert (user, role, bound) == (f"node-{machine}", "node", machine)
        assert (tmp_path / f"token-{machine}").read_text() == token + "\n"
        assert stat.S_IMODE(os.stat(tmp_path / f"token-{machine}").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "tokens.csv").st_mode) == 0o600


def test_layout_names_every_process_and_shares_one_agent_port(tmp_path: Path) -> None:
    options = devlib.UpOptions(machines=2, cluster="c9", api_port=0, agent_port=0, proxy_image="img:1")
    echoed: list[str] = []
    state = devlib._layout(options, tmp_path, etcd_bin="/opt/etcd", admin_token="tok", machines=["m1", "m2"],
                           addresses=["127.0.1.1", "127.0.1.2"], echo=echoed.append)
    assert [p.name for p in state.procs] == ["etcd", "apiserver", "agent-m1", "agent-m2"]
    assert state.proc("etcd").args[0] == "/opt/etcd"
    api = state.proc("apiserver").args
    assert api[api.index("--listen") + 1] == state.server.removeprefix("http://")
    assert api[api.index("--etcd") + 1] == state.etcd_url
    ports = set()
    for machine, address in (("m1", "127.0.1.1"), ("m2", "127.0.1.2")):
        args = state.agent(machine).args
        assert args[args.index("--address") + 1] == address
        assert args[args.index("--cluster") + 1] == "c9"
        assert args[args.index("--proxy-image") + 1] == "img:1"
        ports.add(args[args.index("--agent-port") + 1])
    assert len(ports) == 1 and echoed == []


def test_up_cleans_up_when_etcd_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devlib, "docker_ok", lambda: True)
    monkeypatch.setattr(devlib, "find_etcd", lambda: "/bin/false")  # exits at once
    monkeypatch.setattr(devlib, "remove_containers", lambda cluster, machine=None: 0)
    folder = tmp_path / "state"
    options = devlib.UpOptions(machines=2, state_dir=folder, api_port=0, agent_port=0, build_images=False,
                               write_config=False, timeout=10)
    echoed: list[str] = []
    with pytest.raises(DevError, match="etcd exited while waiting for etcd"):
        devlib.up(options, echo=echoed.append)
    assert echoed[0] == f"state folder: {folder}"
    assert "dev up failed; cleaning up what it started" in echoed
    assert not folder.exists()


def test_down_without_a_cluster_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    echoed: list[str] = []
    assert devlib.down(tmp_path / "empty", echo=echoed.append) is False
    assert not (tmp_path / "empty").exists()
    assert echoed == [f"no dev cluster in {tmp_path / 'empty'}; nothing to do"]


def test_up_refuses_a_machine_count_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(DevError, match="between 1 and 254"):
        devlib.up(devlib.UpOptions(machines=0, state_dir=tmp_path / "s"), echo=lambda _line: None)


def test_layout_with_tls_serves_https_and_every_agent_trusts_the_ca(tmp_path: Path) -> None:
    tls = write_dev_tls(tmp_path / "tls", cluster="c9")
    options = devlib.UpOptions(machines=2, cluster="c9", api_port=0, agent_port=0)
    state = devlib._layout(options, tmp_path, etcd_bin="/opt/etcd", admin_token="tok", machines=["m1", "m2"],
                           addresses=["127.0.1.1", "127.0.1.2"], echo=lambda _line: None, tls=tls)
    assert state.server.startswith("https://127.0.0.1:") and state.ca == str(tls.ca_cert)
    api = state.proc("apiserver").args
    assert api[api.index("--listen") + 1] == state.server.removeprefix("https://")
    assert (api[api.index("--tls-cert") + 1], api[api.index("--tls-key") + 1]) == (str(tls.server_cert),
                                                                                  str(tls.server_key))
    for machine in ("m1", "m2"):
        args = state.agent(machine).args
        assert args[args.index("--ca") + 1] == str(tls.ca_cert)
        assert args[args.index("--server") + 1] == state.server
    plain = devlib._layout(options, tmp_path, etcd_bin="/opt/etcd", admin_token="tok", machines=["m1"],
                           addresses=["127.0.1.1"], echo=lambda _line: None)
    assert plain.server.startswith("http://") and plain.ca == "" and "--tls-cert" not in plain.proc("apiserver").args
    assert "--ca" not in plain.agent("m1").args


def test_the_cluster_ca_signs_a_server_certificate_for_the_api_addresses(tmp_path: Path) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    tls = write_dev_tls(tmp_path / "tls", cluster="c9", ips=["127.0.1.1"], now=now)
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                         ipaddress.ip_address("127.0.1.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc <= ca.not_valid_after_utc
    for key in (tls.ca_key, tls.server_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "tls").st_mode) == 0o700
    ssl.create_default_context(cafile=str(tls.ca_cert))  # loads as a trust anchor
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.server_cert, tls.server_key)


def test_the_cpctl_config_names_the_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    state = _state(tmp_path)
    state.config_path = state.config_backup = ""
    devlib._write_cpctl_config(state)
    written = yaml.safe_load(Path(state.config_path).read_text())
    assert written["server"] == state.server and written["ca"] == "/x/tls/ca.crt" and written["token"] == "tok"
    state.ca = ""
    devlib._write_cpctl_config(state)
    assert "ca" not in yaml.safe_load(Path(state.config_path).read_text())
