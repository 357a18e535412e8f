"""
The nswarm service the benchmarks call (W1 to W3): it implements C{echo},
which answers with its argument. Run by bench/run.py beside the node.
"""

from __future__ import annotations

from nswarm.service import Service, implement


class Echo(Service):
    name = "bench-echo"

    @implement
    def echo(self, payload: str) -> str:
        return payload


if __name__ == "__main__":
    Echo.main()
