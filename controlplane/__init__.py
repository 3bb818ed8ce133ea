"""controlplane: a fleet-style container scheduler with a Kubernetes-style REST API."""

__version__ = "0.1.0"
