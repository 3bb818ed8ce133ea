"""Text from the server made safe for a terminal: the one sanitiser every cpctl printer uses.

Anything an API object holds (a label value, an annotation, an Event or instance message, a
Status message, the server's version string) can carry terminal control sequences: an ESC
sequence can recolour or clear the screen, move the cursor to overwrite what cpctl printed,
set the window title, or (OSC 52) write the clipboard. ``safe_text`` removes them whole (ESC
and 8-bit C1 sequences with their parameters), then every control character left: C0 (except
newline and tab in a multi-line block; in a single line they become a space), DEL and C1.
Everything else, any printable Unicode, passes unchanged. ``echo`` is ``click.echo`` through it.

``cpctl logs`` prints the container's own output: raw bytes when stdout is not a terminal (a
pipe or a file gets exactly what the container wrote, as ``kubectl logs`` does), and through
``LogFilter`` when it is one.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import click

# ESC sequences, as ECMA-48 frames them: CSI (ESC [ params intermediates final), the string
# commands OSC/DCS/SOS/PM/APC (ESC ] P X ^ _ ... up to BEL or ST; never past a line end, so an
# unterminated one cannot swallow the rest of a page), and the short escapes (ESC c, ESC ( B).
_CSI = r"\[[0-?]*[ -/]*[@-~]"
_STRING_COMMAND = r"[\]PX^_][^\x07\x1b\n]*"
_SHORT = r"[ -/]*[0-OQ-WYZ\\`-~]"  # final byte 0x30-0x7e, except those that open CSI or a string
_C1_CSI = r"\x9b[0-?]*[ -/]*[@-~]"
_C1_STRING = r"[\x9d\x90\x98\x9e\x9f][^\x07\x9c\x1b\n]*"  # 8-bit OSC, DCS, SOS, PM, APC
# what is removed: whole sequences, open ones too (to their line's end), and a lone ESC
_SEQUENCE = re.compile(
    rf"\x1b(?:{_CSI}|{_STRING_COMMAND}(?:\x07|\x1b\\)?|{_SHORT})?|{_C1_CSI}|{_C1_STRING}[\x07\x9c]?"
)
# a sequence that is finished (a later chunk cannot extend it)
_COMPLETE = re.compile(rf"\x1b(?:{_CSI}|{_STRING_COMMAND}(?:\x07|\x1b\\)|{_SHORT})|{_C1_CSI}|{_C1_STRING}[\x07\x9c]")
_INTRODUCERS = re.compile(r"[\x1b\x9b\x9d\x90\x98\x9e\x9f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACE_LIKE = re.compile(r"[\t\n\r\x0b\x0c]")
_CONTROL_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HOLD_AT_MOST = 4096  # a sequence still open after this many characters is not waited for


def safe_text(text: str, *, multiline: bool = True) -> str:
    """``text`` without terminal control sequences or control characters (see the module doc).
    ``multiline`` keeps newlines and tabs; otherwise they (and CR, VT, FF) become spaces."""
    if text.isprintable():
        return text  # the common case: nothing to strip (isprintable is False for \n, \t, ESC, C1)
    text = _SEQUENCE.sub("", text)
    if multiline:
        return _CONTROL_MULTILINE.sub("", text)
    return _CONTROL_LINE.sub("", _SPACE_LIKE.sub(" ", text))


def echo(message: Any = "", *, err: bool = False, nl: bool = True) -> None:
    """``click.echo`` of text that may hold server data: through ``safe_text`` first."""
    click.echo(safe_text(str(message)), err=err, nl=nl)


def _open_sequence_start(text: str) -> int:
    """Where a control sequence the next chunk may still complete starts (``len(text)``: none)."""
    starts = [m.start() for m in _INTRODUCERS.finditer(text, max(0, len(text) - _HOLD_AT_MOST))]
    if not starts:
        return len(text)
    tail = text[starts[-1]:]
    if "\n" in tail or _COMPLETE.match(tail):
        return len(text)
    return starts[-1]


class LogFilter:
    """``safe_text`` over a byte stream in chunks: UTF-8 decoded incrementally (invalid bytes
    become U+FFFD), and a control sequence split across chunks held back until it is whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    def feed(self, chunk: bytes, *, final: bool = False) -> str:
        text = self._held + self._decoder.decode(chunk, final)
        cut = len(text) if final else _open_sequence_start(text)
        text, self._held = text[:cut], text[cut:]
        return safe_text(text)
