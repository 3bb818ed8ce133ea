"""Images from the cluster instead of a registry: the proxy image on a fresh node.

A node that must start a container whose image it lacks asks the API server's ``/dist/`` index
first: when an image tarball there names that image (``docker save``: ``make wheelhouse`` puts the
proxy image, local/nginx:latest, beside the wheels), the agent downloads it, checks its sha256
against the index and loads it into its Docker engine (``POST /images/load``). Only when the
cluster offers no such image does the executor pull from a registry as before. So a cluster
without any registry still runs proxies on machines that joined through ``cpctl machine
join-config``, with the very image every other machine runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from agent.runtime.base import ImagePullError
from controlplane.client import Client
from controlplane.distfiles import SHA256_HEX, safe_name
from controlplane.errors import CPError, NotFound

log = logging.getLogger(__name__)
CHUNK = 256 * 1024


class ImageEngine(Protocol):
    async def image_present(self, image: str) -> bool: ...

    async def load_image(self, path: str) -> None: ...


def normalized(image: str) -> str:
    """``local/nginx`` -> ``local/nginx:latest`` (a tag-less reference means :latest; digests stay)."""
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last or "@" in image else f"{image}:latest"


def tarball_for(index: Any, image: str) -> tuple[str, str] | None:
    """Pure: (file, sha256) of the index entry whose ``images`` names ``image``, or None."""
    wanted = normalized(image)
    for entry in index if isinstance(index, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list):
            continue
        file, sha = str(entry.get("file") or ""), str(entry.get("sha256") or "")
        if any(isinstance(tag, str) and normalized(tag) == wanted for tag in entry["images"]):
            if safe_name(file) and file.endswith(".tar") and SHA256_HEX.fullmatch(sha):
                return file, sha
    return None


class ClusterImages:
    """Loads images the cluster serves at /dist/ into ``engine``; one download per image at a time."""

    def __init__(self, client: Client, engine: ImageEngine, *, spool_dir: str | None = None) -> None:
        self.client = client
        self.engine = engine
        self.spool_dir = spool_dir
        self._locks: dict[str, asyncio.Lock] = {}

    async def provide(self, image: str) -> bool:
        """True when the image is here now because the cluster served it; False when the cluster
        offers no such image (pull it). ImagePullError when it offers it but loading failed."""
        async with self._locks.setdefault(normalized(image), asyncio.Lock()):
            if await self.engine.image_present(image):
                return True
            index = await self._get_index()
            found = tarball_for(index, image) if index is not None else None
            if found is None:
                return False
            file, sha = found
            log.info("image %s is missing: loading it from the cluster (/dist/%s)", image, file)
            await self._download_and_load(image, file, sha)
            if not await self.engine.image_present(image):
                raise ImagePullError(f"loading image {image!r} from /dist/{file} did not yield the image")
            return True

    async def _get_index(self) -> Any:
        try:
            return await self.client.request("GET", "/dist/")
        except NotFound:
            return None  # a server without /dist/: nothing offered
        except CPError as err:
            log.warning("cannot read the cluster's /dist/ index: %s", err)
            return None

    async def _download_and_load(self, image: str, file: str, sha: str) -> None:
        fd, path = tempfile.mkstemp(prefix="cp-image-", suffix=".tar", dir=self.spool_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                got = await self._download(file, out.write)
            if got != sha:
                raise ImagePullError(f"image {image!r}: /dist/{file} has sha256 {got[:16]}..., "
                                     f"the index says {sha[:16]}...: not loaded")
            await self.engine.load_image(path)
        finally:
            os.unlink(path)

    async def _download(self, file: str, write: Callable[[bytes], Any]) -> str:
        digest = hashlib.sha256()
        try:
            async with self.client.session().get(f"{self.client.server}/dist/{file}",
                                                  timeout=aiohttp.ClientTimeout(total=600)) as resp:
                if resp.status != 200:
                    raise ImagePullError(f"GET /dist/{file} answered {resp.status}")
                async for chunk in resp.content.iter_chunked(CHUNK):
                    digest.update(chunk)
                    write(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError, CPError) as err:
            raise ImagePullError(f"downloading /dist/{file} failed: {err}") from err
        return digest.hexdigest()

