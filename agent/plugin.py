"""What the agent offers to the things that ride along with it (today: the proxy manager).

A plug-in is declared when the agent is built (``Agent(..., plugins=[...])``) and the agent calls it
at four fixed points, so no plug-in overwrites an agent attribute or polls the agent's state:

- ``shape``: after the agent has read the instances bound here, before every sync; a plug-in may
  change the container of the instances it owns (image, command, network, binds) or leave one out;
- ``container_changed``: when the container the agent reports for an instance changes;
- ``status_fields``: while a status report is built; the fields returned are laid over it;
- ``run``: the plug-in's own long-lived task, run (and cancelled) with the agent's loops.

This module depends on the agent's vocabulary only (reconcile's ``DesiredInstance``, the model's
TypedDicts), never on the agent loop or on a plug-in: the agent imports it, plug-ins implement it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from agent.reconcile import DesiredInstance
from controlplane.model import Instance, InstanceStatus


class AgentPlugin(Protocol):
    def shape(self, desired: Sequence[DesiredInstance], instances: Mapping[str, Instance]) -> list[DesiredInstance]:
        """The desired instances to run, given those the agent derived and the Instance objects
        (by name) they come from. Called before every sync; must not block."""
        ...

    def container_changed(self, instance: str, container_id: str) -> None:
        """The container reported for ``instance`` is now ``container_id`` (a new container was
        started, or ``""``: it has none any more). Called once per change; must not block."""
        ...

    def status_fields(self, instance: str, status: InstanceStatus) -> InstanceStatus:
        """Fields to add to (or override in) the status about to be reported for ``instance``;
        ``{}`` for none. ``status`` is read, not changed."""
        ...

    async def run(self) -> None:
        """The plug-in's long-lived work; runs until cancelled. An exception stops the agent."""
        ...
