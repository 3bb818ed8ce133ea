"""Timeline marks (controlplane/timeline.py): a line per mark with CP_TIMELINE, none without, and
the bench's parser reads back what a mark wrote."""

from __future__ import annotations

import pytest

from controlplane import timeline


def test_a_mark_line_parses_back() -> None:
    line = timeline.mark_line("agent.probe", ("web-0", "ok"), now=12.5, pid=42)
    assert line == "timeline 12.500000 42 agent.probe web-0 ok\n"
    assert timeline.parse_line(line) == (12.5, 42, "agent.probe", "web-0 ok")
    assert timeline.parse_line(timeline.mark_line("cpctl.wait.done", (), now=1.0, pid=7)) == (
        1.0, 7, "cpctl.wait.done", "")


@pytest.mark.parametrize("line", ["", "INFO cp-agent: create web-0", "timeline x 1 what", "timeline 1.0 p what"])
def test_other_lines_are_not_marks(line: str) -> None:
    assert timeline.parse_line(line) is None


def test_marks_are_written_only_when_enabled(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(timeline, "ENABLED", False)
    timeline.mark("cpctl.post", "web")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(timeline, "ENABLED", True)
    timeline.mark("cpctl.post", "web")
    parsed = timeline.parse_line(capsys.readouterr().err)
    assert parsed is not None and parsed[2:] == ("cpctl.post", "web")
