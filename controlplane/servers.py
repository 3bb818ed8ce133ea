"""The API servers one client talks to: ``--server URL[,URL...]``, the one that answered last first.

Every cp-apiserver of a cluster serves the whole API over one etcd, so a client (cpctl, cp-agent)
that cannot reach one, or hears a 503 from it (its store is unreachable), can ask the next.
``ServerList`` remembers which server answered last, so the calls after a failover start there
instead of paying a failed connect each time. Pure: no I/O; controlplane/client.py does the asking.
"""

from __future__ import annotations

from collections.abc import Sequence


def parse_servers(servers: str | Sequence[str]) -> tuple[str, ...]:
    """``"http://a:7070, b:7070"`` (or a sequence of URLs) -> the URLs, without trailing slashes,
    ``http://`` added where no scheme is given, each once, in the order given."""
    parts = servers.split(",") if isinstance(servers, str) else [p for s in servers for p in s.split(",")]
    urls: list[str] = []
    for part in parts:
        url = part.strip().rstrip("/")
        if not url:
            continue
        if "://" not in url:
            url = "http://" + url
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ValueError(f"no API server URL in {servers!r}")
    return tuple(urls)


class ServerList:
    """The servers in order; ``current`` is the one to ask first."""

    def __init__(self, servers: str | Sequence[str]) -> None:
        self.urls = parse_servers(servers)
        self._current = 0

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def current(self) -> str:
        return self.urls[self._current]

    def attempts(self) -> list[str]:
        """Each server once, the current one first, then the others in ring order."""
        n = len(self.urls)
        return [self.urls[(self._current + i) % n] for i in range(n)]

    def failed(self, url: str) -> None:
        """``url`` did not answer: move on to the next one, unless another call already did
        (concurrent failures of one server move the list on once, not once per call)."""
        if url == self.current:
            self._current = (self._current + 1) % len(self.urls)

    def answered(self, url: str) -> None:
        """``url`` answered: ask it first from now on."""
        if url in self.urls:
            self._current = self.urls.index(url)
