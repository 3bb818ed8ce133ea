"""``--metadata k=v,k=v``: fleet's machine metadata as typed on a command line (cp-agent, cpctl join-config).

One parser for both, so a label the API would refuse in a heartbeat is refused where it is typed.
"""

from __future__ import annotations

from controlplane.validators import LABEL_KEY, LABEL_VALUE


def parse_metadata(text: str) -> dict[str, str]:
    """``k=v,k=v`` -> machine labels, each a valid label key and value; ValueError names the bad part."""
    labels: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not LABEL_KEY.fullmatch(key) or len(key) > 253:
            raise ValueError(f"expected k=v with a label key, got {part!r}")
        if len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            raise ValueError(f"{value!r} (for {key!r}) is not a label value")
        labels[key] = value
    return labels
