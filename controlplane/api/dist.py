"""``/dist/``: the cluster's own software, served without a token, so a new machine joins air-gapped.

The folder given by ``cp-apiserver --wheelhouse DIR`` (``make wheelhouse`` fills ``build/wheelhouse``)
holds this version's controlplane wheel, the wheels it depends on, and image tarballs
(``docker save``, ``*.tar``: the proxy image, which a node without a registry loads from here,
agent/distimages.py). ``GET /dist/`` is the index, ``[{"file", "sha256", "size"[, "images"]}]``
sorted by file; ``GET /dist/FILE`` is one file. ``cpctl machine join-config`` pins every wheel's
sha256 from the index into the cloud-config it renders.

What is served (controlplane/distfiles.py decides): regular files directly in the folder (never a
symlink, never a subfolder), whose name is plain, ending in ``.whl`` or ``.tar``, and of the
controlplane wheels only the one of the server's own version. Files are opened relative to the
folder with O_NOFOLLOW, so a name can neither climb out of it nor follow a link swapped in later.
Hashes are cached by (size, mtime, inode) and recomputed when a file changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from controlplane import __version__
from controlplane.api.http import json_response
from controlplane.distfiles import servable
from controlplane.errors import NotFound

log = logging.getLogger(__name__)
CHUNK = 256 * 1024


@dataclass(frozen=True)
class DistFile:
    file: str
    sha256: str
    size: int
    images: tuple[str, ...] = ()

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "sha256": self.sha256, "size": self.size}
        if self.file.endswith(".tar"):
            out["images"] = list(self.images)
        return out


def image_tags(manifest: Any) -> tuple[str, ...]:
    """Pure: the RepoTags of a ``docker save`` manifest.json (a list of {"RepoTags": [...]})."""
    tags: list[str] = []
    for item in manifest if isinstance(manifest, list) else []:
        for tag in (item.get("RepoTags") or []) if isinstance(item, dict) else []:
            if isinstance(tag, str) and tag not in tags:
                tags.append(tag)
    return tuple(tags)


def _hash_and_tags(fd: int, filename: str) -> tuple[str, tuple[str, ...]]:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK):
        digest.update(chunk)
    tags: tuple[str, ...] = ()
    if filename.endswith(".tar"):
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            with os.fdopen(os.dup(fd), "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
                member = tar.extractfile("manifest.json")
                tags = image_tags(json.loads(member.read())) if member else ()
        except (tarfile.TarError, KeyError, ValueError, OSError) as err:
            log.warning("wheelhouse: %s is not a docker-save tarball (%s); served without images", filename, err)
    return digest.hexdigest(), tags


class Wheelhouse:
    """The served folder; ``folder`` None (or missing) serves an empty index."""

    def __init__(self, folder: str | Path | None, *, version: str = __version__) -> None:
        self.folder = Path(folder) if folder else None
        self.version = version
        self._cache: dict[str, tuple[tuple[int, int, int], DistFile]] = {}

    def _open_folder(self) -> int | None:
        if self.folder is None:
            return None
        try:
            return os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None

    def _candidates(self, dir_fd: int) -> Iterator[str]:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and servable(entry.name, version=self.version):
                    yield entry.name

    def open_file(self, dir_fd: int, name: str) -> tuple[int, os.stat_result] | None:
        """The file opened without following links, if it is a regular file; else None."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None
        return fd, info

    def scan(self) -> list[DistFile]:
        """The index now (blocking: run it in a thread); unchanged files keep their cached hash."""
        dir_fd = self._open_folder()
        if dir_fd is None:
            return []
        try:
            files: dict[str, tuple[tuple[int, int, int], DistFile]] = {}
            for name in sorted(self._candidates(dir_fd)):
                opened = self.open_file(dir_fd, name)
                if opened is None:
                    continue
                fd, info = opened
                try:
                    key = (info.st_size, info.st_mtime_ns, info.st_ino)
                    cached = self._cache.get(name)
                    if cached is None or cached[0] != key:
                        sha, tags = _hash_and_tags(fd, name)
                        cached = (key, DistFile(name, sha, info.st_size, tags))
                    files[name] = cached
                finally:
                    os.close(fd)
            self._cache = files
            return [dist for _, dist in files.values()]
        finally:
            os.close(dir_fd)

    def open_served(self, name: str) -> tuple[int, int] | None:
        """(fd, size) of a served file, opened for reading (the caller closes it), or None."""
        if not servable(name, version=self.version):
            return None
        dir_fd = self._open_folder()
        if dir_fd is None:
            return None
        try:
            opened = self.open_file(dir_fd, name)
        finally:
            os.close(dir_fd)
        return None if opened is None else (opened[0], opened[1].st_size)


WHEELHOUSE = web.AppKey("wheelhouse", Wheelhouse)


async def index_handler(request: web.Request) -> web.Response:
    files = await asyncio.to_thread(request.app[WHEELHOUSE].scan)
    return json_response([f.entry() for f in files])


async def file_handler(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    found = await asyncio.to_thread(request.app[WHEELHOUSE].open_served, name)
    if found is None:
        raise NotFound(f"/dist/ has no file {name[:80]!r}; GET /dist/ lists what it serves")
    fd, size = found
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        if request.method != "HEAD":
            while chunk := await asyncio.to_thread(os.read, fd, CHUNK):
                await response.write(chunk)
        await response.write_eof()
    finally:
        os.close(fd)
    return response


def is_dist_path(path: str) -> bool:
    return path == "/dist" or path.startswith("/dist/")


def add_routes(app: web.Application, folder: str | Path | None) -> None:
    app[WHEELHOUSE] = Wheelhouse(folder)
    app.router.add_get("/dist", index_handler)
    app.router.add_get("/dist/", index_handler)
    app.router.add_get("/dist/{file}", file_handler)
