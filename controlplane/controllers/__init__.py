"""Leader-only loops: election, presence, the reconcile pass and its planning."""
