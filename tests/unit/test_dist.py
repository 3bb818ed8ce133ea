"""/dist/ (controlplane/api/dist.py): what the wheelhouse serves, without a token, and what it refuses.

In process: make_app over a MemoryStore with a token table, so "public" is tested against a server
that does ask for tokens elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from controlplane import __version__
from controlplane.api.app import make_app
from controlplane.api.auth import TokenTable, User
from controlplane.api.dist import Wheelhouse, image_tags
from controlplane.distfiles import servable, wheel_name_version
from controlplane.store.memory import MemoryStore

OWN_WHEEL = f"controlplane-{__version__}-py3-none-any.whl"


def docker_save_tar(tags: list[str]) -> bytes:
    """A tarball shaped like `docker save`'s: a manifest.json naming the tags."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("layer.tar", b"x" * 1000), ("manifest.json", json.dumps([{"RepoTags": tags}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    (folder / OWN_WHEEL).write_bytes(b"own wheel")
    (folder / "controlplane-0.0.1-py3-none-any.whl").write_bytes(b"an older version")
    (folder / "aiohttp-3.9.5-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"dep")
    (folder / "local-nginx-latest.tar").write_bytes(docker_save_tar(["local/nginx:latest"]))
    (folder / "notes.txt").write_text("not served")
    (folder / ".recipe").write_text("hidden")
    (folder / "sub").mkdir()
    (tmp_path / "secret.whl").write_bytes(b"outside")
    os.symlink(tmp_path / "secret.whl", folder / "linked-1.0-py3-none-any.whl")
    return folder


@pytest.fixture
async def client(wheelhouse: Path) -> AsyncIterator[TestClient]:
    tokens = TokenTable({"admin-token": User("admin", "admin")})
    app = make_app(MemoryStore(), tokens=tokens, config={"wheelhouse": str(wheelhouse)})
    test_client = TestClient(TestServer(app, host="127.0.0.1"))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


def test_servable_names() -> None:
    assert servable(OWN_WHEEL)
    assert not servable("controlplane-0.0.1-py3-none-any.whl")
    assert servable("local-nginx-latest.tar")
    for bad in ("../x.whl", ".hidden.whl", "a/b.whl", "notes.txt", "x..whl", "broken.whl", ""):
        assert not servable(bad), bad
    assert wheel_name_version("Markdown_It_Py-4.3.0-py3-none-any.whl") == ("markdown-it-py", "4.3.0")
    assert image_tags([{"RepoTags": ["a:1", "b:2"]}, {"RepoTags": None}, "junk"]) == ("a:1", "b:2")


def test_scan_lists_only_served_files_with_their_sha256(wheelhouse: Path) -> None:
    files = {f.file: f for f in Wheelhouse(wheelhouse).scan()}
    assert sorted(files) == ["aiohttp-3.9.5-cp311-cp311-manylinux_2_17_x86_64.whl", OWN_WHEEL,
                             "local-nginx-latest.tar"]
    assert files[OWN_WHEEL].sha256 == hashlib.sha256(b"own wheel").hexdigest()
    assert files["local-nginx-latest.tar"].images == ("local/nginx:latest",)
    # a changed file gets a new hash (the cache is keyed by size, mtime and inode)
    (wheelhouse / OWN_WHEEL).write_bytes(b"own wheel, rebuilt")
    again = {f.file: f for f in Wheelhouse(wheelhouse).scan()}
    assert again[OWN_WHEEL].sha256 == hashlib.sha256(b"own wheel, rebuilt").hexdigest()


def test_a_missing_folder_serves_an_empty_index(tmp_path: Path) -> None:
    assert Wheelhouse(tmp_path / "nope").scan() == []
    assert Wheelhouse(None).scan() == []


async def test_index_and_files_need_no_token(client: TestClient, wheelhouse: Path) -> None:
    resp = await client.get("/dist/")
    assert resp.status == 200
    index = await resp.json()
    assert [e["file"] for e in index] == sorted(e["file"] for e in index)
    by_file = {e["file"]: e for e in index}
    assert by_file["local-nginx-latest.tar"]["images"] == ["local/nginx:latest"]
    resp = await client.get(f"/dist/{OWN_WHEEL}")
    assert resp.status == 200
    body = await resp.read()
    assert hashlib.sha256(body).hexdigest() == by_file[OWN_WHEEL]["sha256"]
    assert resp.headers["Content-Type"] == "application/octet-stream"
    # the rest of the API still wants a token
    assert (await client.get("/api/v1/units")).status == 401


@pytest.mark.parametrize("path", [
    "/dist/controlplane-0.0.1-py3-none-any.whl",  # another version than the server's
    "/dist/notes.txt", "/dist/.recipe", "/dist/sub",
    "/dist/linked-1.0-py3-none-any.whl",  # a symlink, even to a wheel
    "/dist/..%2Fsecret.whl", "/dist/%2e%2e%2fsecret.whl", "/dist/..%2F..%2F..%2Fetc%2Fpasswd",
    "/dist/%2Fetc%2Fpasswd", "/dist/sub%2F..%2F..%2Fsecret.whl",
])
async def test_refused_paths(client: TestClient, path: str) -> None:
    resp = await client.get(URL(path, encoded=True))
    assert resp.status == 404, path
    body = await resp.json()
    assert body["kind"] == "Status"
    assert b"outside" not in await resp.read()


async def test_a_file_swapped_for_a_symlink_is_not_followed(client: TestClient, wheelhouse: Path,
                                                            tmp_path: Path) -> None:
    target = wheelhouse / "aiohttp-3.9.5-cp311-cp311-manylinux_2_17_x86_64.whl"
    target.unlink()
    os.symlink(tmp_path / "secret.whl", target)
    assert (await client.get(f"/dist/{target.name}")).status == 404
    index = await (await client.get("/dist/")).json()
    assert target.name not in {e["file"] for e in index}
