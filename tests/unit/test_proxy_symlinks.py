"""The proxy config folder never follows a symlink: the test plays a container that planted one under
every name the applier and the manager read or write, pointing at a host file outside the folder.
Afterwards the host files are unchanged, their content is in no config, and the names are the
applier's own regular files."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.proxy import safefs
from agent.proxy.apply import CONF_NAME, LAST_GOOD_NAME, STAGED_NAME, NginxApplier
from agent.proxy.manager import PORTS_NAME, ProxyInstance
from agent.proxy.render import extract_hash, render
from agent.proxy.routes import ProxySpec
from agent.proxy.runners import CONTAINER_DIR, DockerExecNginx

HOST_TEXT = "HOST-FILE-CONTENT root:x:0:0\n"
NAMES = (CONF_NAME, STAGED_NAME, LAST_GOOD_NAME, PORTS_NAME)


def regular_text(path: Path) -> str:
    assert not path.is_symlink(), path
    return path.read_text()


class ServingRunner:
    """nginx as far as the applier can tell: it 'serves' whatever regular nginx.conf holds."""

    def __init__(self, conf_dir: Path) -> None:
        self.conf_dir = conf_dir
        self.tested: list[str] = []

    async def test(self, conf: Path) -> tuple[bool, str]:
        self.tested.append(regular_text(conf))
        return True, ""

    async def reload(self) -> tuple[bool, str]:
        return True, ""

    async def fetch_hash(self) -> str | None:
        return extract_hash(regular_text(self.conf_dir / CONF_NAME))

    async def reload_settled(self) -> bool:
        return True


def plant(conf_dir: Path, outside: Path) -> dict[str, Path]:
    """A symlink per name, each to its own host file."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    targets = {}
    for name in NAMES:
        target = outside / f"host-{name}"
        target.write_text(HOST_TEXT)
        link = conf_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        targets[name] = target
    return targets


def assert_untouched(targets: dict[str, Path]) -> None:
    for target in targets.values():
        assert target.read_text() == HOST_TEXT


def config(port: int) -> str:
    return render(ProxySpec(kind="loadbalancer", port=port, target="web"), [], status_port=9999).text


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "host"
    outside.mkdir()
    return tmp_path / "conf", outside


async def test_prepare_and_apply_replace_planted_symlinks(folders: tuple[Path, Path]) -> None:
    conf_dir, outside = folders
    targets = plant(conf_dir, outside)
    runner = ServingRunner(conf_dir)
    applier = NginxApplier(conf_dir, runner, verify_timeout=0.5, poll_interval=0.001, confirmations=1)
    initial, new = config(8081), config(8082)

    applier.prepare(initial)
    assert_untouched(targets)
    for name in (CONF_NAME, LAST_GOOD_NAME):  # the planted last-good.conf was not taken as good
        assert not (conf_dir / name).is_symlink() and (conf_dir / name).read_text() == initial
    assert not (conf_dir / STAGED_NAME).exists() and not (conf_dir / STAGED_NAME).is_symlink()

    plant(conf_dir, outside)  # the container plants them again while nginx runs
    result = await applier.apply(new)
    assert result.ok and result.changed, result
    assert_untouched(targets)
    assert runner.tested == [new] and HOST_TEXT not in new
    for name in (CONF_NAME, LAST_GOOD_NAME):
        assert not (conf_dir / name).is_symlink() and (conf_dir / name).read_text() == new
    assert sorted(p.name for p in conf_dir.iterdir() if p.name.startswith(".")) == []  # no temp file left


async def test_apply_before_prepare_does_not_read_a_planted_last_good(folders: tuple[Path, Path]) -> None:
    conf_dir, outside = folders
    targets = plant(conf_dir, outside)
    applier = NginxApplier(conf_dir, ServingRunner(conf_dir))
    with pytest.raises(RuntimeError, match="prepare"):
        await applier.apply(config(8083))
    assert_untouched(targets)


def test_ports_file_symlink_is_neither_read_nor_written_through(folders: tuple[Path, Path]) -> None:
    conf_dir, outside = folders
    targets = plant(conf_dir, outside)
    targets[PORTS_NAME].write_text('{"listen": 1, "status": 2, "containerPort": 80}')
    proxy = ProxyInstance("lb-0", ProxySpec(kind="loadbalancer", port=80, target="web"), conf_dir,
                          address="127.0.0.1", host_port=0)
    assert (proxy.listen_port, proxy.status_port) != (1, 2)  # the planted ports were not read
    assert targets[PORTS_NAME].read_text() == '{"listen": 1, "status": 2, "containerPort": 80}'
    assert not (conf_dir / PORTS_NAME).is_symlink()


def test_safefs_reads_only_regular_files(tmp_path: Path) -> None:
    import os

    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("ok")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    with safefs.open_dir(tmp_path) as folder:
        assert safefs.read_text(folder, "file") == "ok"
        for name in ("dir", "fifo", "link", "missing"):
            assert safefs.read_text(folder, name) is None, name
        safefs.unlink(folder, "link")
    assert (tmp_path / "file").read_text() == "ok"  # unlinking the link left its target alone
    (tmp_path / "dirlink").symlink_to(tmp_path / "dir")
    with pytest.raises(OSError), safefs.open_dir(tmp_path / "dirlink", create=False):
        pass  # the folder itself may not be a symlink either


def test_exec_runner_maps_paths_without_following_links(folders: tuple[Path, Path]) -> None:
    conf_dir, outside = folders
    plant(conf_dir, outside)
    runner = DockerExecNginx(None, "c", host_dir=conf_dir, status_port=1)
    assert runner._in_container(conf_dir / STAGED_NAME) == f"{CONTAINER_DIR}/{STAGED_NAME}"
    with pytest.raises(ValueError):
        runner._in_container(conf_dir / ".." / "host" / "x")
