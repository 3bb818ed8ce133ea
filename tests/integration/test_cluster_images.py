"""A node without a registry gets a missing image from the cluster (agent/distimages.py), with real Docker.

A throwaway image (static busybox plus a random file, so its id is new) is saved into the
wheelhouse of a real cp-apiserver and removed from the engine; the executor, asked to run an
instance of it, loads it from the server's /dist/ instead of pulling, and the container runs.
A tarball whose bytes differ from the index's sha256 is refused and leaves no image behind.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer

from agent.distimages import ClusterImages, tarball_for
from agent.executor import Executor
from agent.reconcile import DesiredInstance
from agent.runtime.base import ImagePullError
from agent.runtime.docker import DockerRuntime
from controlplane.client import Client

pytestmark = pytest.mark.docker


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture(scope="module")
def engine_ok() -> None:
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.skip("no Docker engine")
    if not Path("/bin/busybox").exists():
        pytest.skip("/bin/busybox (busybox-static) missing")


def import_throwaway(tag: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add("/bin/busybox", arcname="bin/busybox")
        nonce = uuid.uuid4().hex.encode()
        info = tarfile.TarInfo("nonce")
        info.size = len(nonce)
        tar.addfile(info, io.BytesIO(nonce))
    subprocess.run(["docker", "import", "-c", 'CMD ["/bin/busybox","sleep","300"]', "-", tag],
                   input=buf.getvalue(), capture_output=True, check=True, timeout=120)


@pytest.fixture
def wheelhouse_with_image(engine_ok: None, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    tag = f"local/cp-dist-test-{uuid.uuid4().hex[:10]}:t"
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    import_throwaway(tag)
    try:
        docker("save", "-o", str(folder / "throwaway.tar"), tag)
        docker("rmi", tag)
        assert docker("image", "inspect", tag, check=False).returncode != 0
        yield folder, tag
    finally:
        for line in docker("ps", "-aq", "--filter", f"ancestor={tag}", check=False).stdout.split():
            docker("rm", "-f", line, check=False)
        docker("rmi", "-f", tag, check=False)


@pytest.fixture
def api_with_images(etcd: EtcdServer, unique_prefix: str,
                    wheelhouse_with_image: tuple[Path, str]) -> Iterator[tuple[ApiServer, str]]:
    folder, tag = wheelhouse_with_image
    with ApiServer(etcd.url, unique_prefix, controllers=False, extra_args=["--wheelhouse", str(folder)]) as api:
        yield api, tag


@pytest.fixture
async def runtime() -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime()
    try:
        yield rt
    finally:
        await rt.close()


async def test_the_executor_loads_a_missing_image_from_the_cluster(
        api_with_images: tuple[ApiServer, str], runtime: DockerRuntime) -> None:
    api, tag = api_with_images
    cluster = f"cp-img-{uuid.uuid4().hex[:8]}"
    async with Client(api.url, token="node-m1-token") as client:
        images = ClusterImages(client, runtime)
        assert tarball_for(await client.request("GET", "/dist/"), tag) is not None
        assert await images.provide("local/not-served:1") is False  # not offered: the executor pulls
        executor = Executor(runtime, cluster=cluster, machine="m1", address="127.0.0.1",
                            image_source=images.provide)
        desired = DesiredInstance(name="img-0", unit="img", index=0, machine="m1", image=tag)
        try:
            result = await executor.sync([desired])
            status = result.statuses["img-0"]
            assert status["phase"] in ("Starting", "Running"), status
            assert await runtime.image_present(tag)
            containers = await runtime.list_containers(cluster=cluster)
            assert [c.image for c in containers] == [tag] and containers[0].state == "running"
        finally:
            for container in await runtime.list_containers(cluster=cluster):
                await runtime.remove(container.id)


async def test_a_tarball_that_does_not_match_its_sha256_is_not_loaded(
        wheelhouse_with_image: tuple[Path, str], runtime: DockerRuntime) -> None:
    folder, tag = wheelhouse_with_image
    data = (folder / "throwaway.tar").read_bytes()

    async def index(request: web.Request) -> web.Response:
        return web.json_response([{"file": "throwaway.tar", "sha256": "0" * 64, "images": [tag]}])

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/dist/", index)
    app.router.add_get("/dist/throwaway.tar", file)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with Client(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(ImagePullError, match="sha256"):
                await ClusterImages(client, runtime, spool_dir=str(folder)).provide(tag)
        assert not await runtime.image_present(tag)
        assert sorted(os.listdir(folder)) == ["throwaway.tar"]  # the download was removed
    finally:
        await runner.cleanup()
