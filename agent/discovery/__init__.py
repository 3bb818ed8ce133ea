"""Service discovery: ``<unit>.<cluster domain>`` answered and forwarded by each agent (docs/discovery.md)."""
