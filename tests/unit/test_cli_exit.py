"""cpctl's exit (controlplane/cli/main.py ``skip_final_collection``)."""

from __future__ import annotations

import gc

import pytest

from controlplane.cli import main


def test_a_command_skips_the_last_collection_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """cpctl's process freezes what is left at exit instead of collecting it (10-20 ms of every
    command), registered once however many commands run in one process."""
    registered: list[object] = []
    monkeypatch.setattr(main.atexit, "register", registered.append)
    monkeypatch.setattr(main.atexit, "unregister", lambda f: registered.remove(f) if f in registered else None)
    main.skip_final_collection()
    main.skip_final_collection()
    assert registered == [gc.freeze]
