"""The names of what ``/dist/`` serves, shared by the server (api/dist.py), ``cpctl machine
join-config`` (joinconfig.py) and the agent (agent/distimages.py).

A served name is plain (``[A-Za-z0-9][A-Za-z0-9._+-]*``, no ``..``), so it is safe in a URL, a
file name and a shell word alike; wheels are named as PEP 427 says, image tarballs end in ``.tar``.
"""

from __future__ import annotations

import re

from controlplane import __version__

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SUFFIXES = (".whl", ".tar")
PROJECT = "controlplane"


def safe_name(filename: str) -> bool:
    return bool(SAFE_NAME.fullmatch(filename)) and ".." not in filename


def wheel_name_version(filename: str) -> tuple[str, str] | None:
    """``aiohttp-3.9.5-cp311-...whl`` -> (``aiohttp``, ``3.9.5``), the name normalized (PEP 503);
    None for a name that is not a wheel's."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6) or not all(parts):
        return None
    return re.sub(r"[-_.]+", "-", parts[0]).lower(), parts[1]


def servable(filename: str, *, version: str = __version__) -> bool:
    """Whether a file of the wheelhouse is served: a plain name with a known suffix, and of the
    controlplane wheels only the one of ``version`` (the server's own)."""
    if not safe_name(filename) or not filename.endswith(SUFFIXES):
        return False
    wheel = wheel_name_version(filename)
    if filename.endswith(".whl") and wheel is None:
        return False
    return wheel is None or wheel[0] != PROJECT or wheel[1] == version
