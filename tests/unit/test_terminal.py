"""The one sanitiser of cpctl's output (controlplane/cli/terminal.py), table-tested, and the
printers that must go through it."""

from __future__ import annotations

import datetime as dt

import pytest

from controlplane.cli.describe import describe_text
from controlplane.cli.printers import render
from controlplane.cli.terminal import LogFilter, safe_text

ESC = "\x1b"

CASES = [
    ("plain text", "plain text", "plain text"),
    ("unicode: é ü 日本 🚀", "unicode: é ü 日本 🚀", "unicode: é ü 日本 🚀"),
    (f"{ESC}[31mred{ESC}[0m", "red", "red"),
    (f"{ESC}[1;38;5;196mbold{ESC}[m", "bold", "bold"),
    (f"a{ESC}[2J{ESC}[Hb", "ab", "ab"),  # clear screen, cursor home
    (f"{ESC}]0;pwned{ESC}\\title", "title", "title"),  # window title, ST-terminated
    (f"{ESC}]0;pwned\x07title", "title", "title"),  # BEL-terminated
    (f"{ESC}]52;c;ZXZpbA==\x07x", "x", "x"),  # OSC 52: write the clipboard
    (f"{ESC}]8;;http://evil{ESC}\\link{ESC}]8;;{ESC}\\", "link", "link"),  # hyperlink
    (f"a{ESC}Pq#0;2;0;0;0{ESC}\\b", "ab", "ab"),  # DCS (sixel)
    (f"a{ESC}_apc{ESC}\\b{ESC}^pm{ESC}\\c{ESC}Xsos{ESC}\\d", "abcd", "abcd"),
    (f"{ESC}(Bx{ESC}7y{ESC}8{ESC}cz", "xyz", "xyz"),  # charset, save/restore cursor, reset
    (f"{ESC}[?1049h{ESC}[?25l", "", ""),  # alternate screen, hide cursor
    (f"cut{ESC}", "cut", "cut"),  # a lone ESC
    (f"cut{ESC}[", "cut[", "cut["),  # a CSI cut short: the ESC goes, "[" is harmless
    (f"{ESC}]0;open\nnext", "\nnext", " next"),  # an open OSC ends at its line
    ("\x9b31mred", "red", "red"),  # 8-bit CSI
    ("\x9d0;t\x9cx", "x", "x"),  # 8-bit OSC, ST
    ("a\x07b\x08c\x7fd\x85e\x00f", "abcdef", "abcdef"),  # BEL, BS, DEL, NEL, NUL
    ("one\ntwo\tthree", "one\ntwo\tthree", "one two three"),
    ("over\rwrite", "overwrite", "over write"),
    ("v\x0bf\x0c", "vf", "v f "),
]


@pytest.mark.parametrize(("raw", "block", "line"), CASES)
def test_safe_text(raw: str, block: str, line: str) -> None:
    assert safe_text(raw) == block
    assert safe_text(raw, multiline=False) == line


@pytest.mark.parametrize(("raw", "block", "line"), CASES)
def test_safe_text_leaves_no_control_character(raw: str, block: str, line: str) -> None:
    for text, allowed in ((safe_text(raw), "\n\t"), (safe_text(raw, multiline=False), "")):
        assert not [c for c in text if (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f) and c not in allowed], repr(text)
        assert safe_text(text) == text  # idempotent


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"ab\x1b[3", b"1mc"], ["ab", "c"]),  # a CSI split across chunks is held, then dropped whole
        ([b"x\x1b]0;ti", b"tle\x07y"], ["x", "y"]),
        ([b"\xc3", b"\xa9t\xc3\xa9"], ["", "\u00e9t\u00e9"]),  # a UTF-8 character split
        ([b"ok\n", b"\xff\n"], ["ok\n", "\ufffd\n"]),  # invalid UTF-8 is replaced
        ([b"a\x1b"], ["a"]),  # held ESC at the end...
    ],
)
def test_log_filter(chunks: list[bytes], expected: list[str]) -> None:
    screen = LogFilter()
    assert [screen.feed(chunk) for chunk in chunks] == expected
    assert screen.feed(b"", final=True) == ""  # ...is dropped at the end of the stream


def test_log_filter_does_not_wait_forever_for_an_open_sequence() -> None:
    screen = LogFilter()
    out = screen.feed(b"\x1b]0;" + b"x" * 5000 + b"visible")
    assert "\x1b" not in out


EVIL = f"{ESC}]0;owned\x07{ESC}[2Jboom\x9b31m"
UNIT = {
    "kind": "Unit",
    "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {"note": EVIL},
                 "creationTimestamp": "2025-01-01T00:00:00Z", "generation": 1, "resourceVersion": "7"},
    "spec": {"image": f"img{ESC}[31m", "replicas": 1},
    "status": {"replicas": 1, "readyReplicas": 0},
}
INSTANCE = {
    "kind": "Instance",
    "metadata": {"name": "web-0", "creationTimestamp": "2025-01-01T00:00:00Z"},
    "spec": {"unit": "web", "index": 0, "machine": ""},
    "status": {"phase": "Pending", "message": f"no machine {EVIL}", "reason": "Unschedulable"},
}
EVENT = {"metadata": {"name": "e1"}, "type": "Warning", "reason": "Bad", "involvedObject": {"kind": "Unit", "name": "web"},
         "message": EVIL, "timestamp": "2025-01-01T00:00:00Z"}
NOW = dt.datetime(2025, 1, 2, tzinfo=dt.UTC)


def _no_escapes(text: str) -> None:
    assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text, repr(text)


@pytest.mark.parametrize("output", ["table", "wide"])
def test_tables_are_safe(output: str) -> None:
    _no_escapes(render("units", [UNIT], output, now=NOW))
    _no_escapes(render("instances", [INSTANCE], output, now=NOW))
    _no_escapes(render("events", [EVENT], output, now=NOW))


def test_describe_is_safe_through_echo() -> None:
    text = describe_text("units", UNIT, instances=[INSTANCE], events=[EVENT], now=NOW)
    assert "\x1b" in text  # describe_text is pure; the command prints it through terminal.echo
    _no_escapes(safe_text(text))
    assert "boom" in safe_text(text)


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_json_and_yaml_escape_control_characters(output: str) -> None:
    text = render("units", [UNIT], output, single=True)
    _no_escapes(text)
    assert safe_text(text) == text  # nothing for echo to take away: the data is kept, escaped
