"""
Supported helpers for testing code that uses nswarm:
L{nswarm.testing.memory} runs a whole cluster in memory (for unit tests of a
L{nswarm.service.Service}, in milliseconds, with a frozen clock) and
L{nswarm.testing.local} runs a real one in child processes (for integration
tests, demos and benchmarks).
"""

from nswarm.testing.memory import MemoryCluster

__all__ = ["MemoryCluster"]
