"""``?dryRun=All`` on writes, as Kubernetes: validate, authorize and admit the write, answer as if
it were done, store nothing (the generic create, replace, patch and delete, and the scale write:
api/objects.py; the document says so through api/openapi_writes.py)."""

from __future__ import annotations

from aiohttp import web

from controlplane.errors import BadRequest

DRY_RUN_VALUES = ("All",)


def dry_run_of(request: web.Request) -> bool:
    """Whether the request is a dry run. Absent: a real write; any value but ``All``, or the
    parameter given twice, is a 400."""
    values = request.query.getall("dryRun", [])
    if not values:
        return False
    if len(values) > 1 or values[0] not in DRY_RUN_VALUES:
        raise BadRequest(f"dryRun must be given once, as {' or '.join(DRY_RUN_VALUES)}; got {values!r:.80}")
    return True
