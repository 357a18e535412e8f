"""nswarm: a network cluster that routes calls and events to Python services."""
