"""The cheap stamps give what the expensive ones gave: ``model.rfc3339`` (isoformat) writes what
strftime wrote, and ``stamps.uuid4_strings`` are version-4 RFC 4122 uuids as ``str(uuid4())``
writes them, all different."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest

from controlplane.model import now_rfc3339, rfc3339
from controlplane.stamps import uuid4_strings
from controlplane.tokens import parse_time


@pytest.mark.parametrize("seconds", [0.0, 1.5, 1_764_590_400.0, 1_764_590_400.000001, 1_764_590_400.999999,
                                     4_102_444_800.25])
def test_rfc3339_writes_what_strftime_wrote(seconds: float) -> None:
    expected = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert rfc3339(seconds) == expected
    assert parse_time(expected) == pytest.approx(seconds, abs=1e-6)


def test_now_rfc3339_reads_its_clock() -> None:
    assert now_rfc3339(lambda: 1_764_590_400.5) == "2025-12-01T12:00:00.500000Z"


def test_bulk_uids_are_distinct_version_4_uuids() -> None:
    uids = uuid4_strings(2000)
    assert len(set(uids)) == 2000
    for text in uids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text and re.fullmatch(r"[0-9a-f-]{36}", text)
    assert uuid4_strings(0) == []
