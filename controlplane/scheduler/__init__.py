"""The scheduler: a pure function from (machines, units, instances) to placements with reasons.

No I/O and no clock live here, so every rule is tested with plain tables and the whole thing
is benchmarked at 5,000 machines without etcd. See README.md in this folder for the pipeline.
"""

from controlplane.scheduler.core import Placement, Scheduler, schedule
from controlplane.scheduler.rules import placement_causes
from controlplane.scheduler.state import ClusterState
from controlplane.scheduler.view import InstanceView, MachineView, UnitView

__all__ = [
    "ClusterState",
    "InstanceView",
    "MachineView",
    "Placement",
    "Scheduler",
    "UnitView",
    "placement_causes",
    "schedule",
]
