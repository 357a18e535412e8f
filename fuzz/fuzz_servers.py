"""
Fuzz the nswarm servers for longer than CI does: random and malformed AMP
boxes and frames, split at random points, thrown at the api server, the node
server and the service server, before and after authentication, while a
well-behaved API user keeps calling. CI runs the same property a bounded
number of times (tests/test_hostile.py); run this by hand for more:

    .venv/bin/python fuzz/fuzz_servers.py --examples 20000

It stops at the first failure and prints the smallest input that shows it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_hostile import INPUTS, check_garbage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=5000, help="how many inputs to try (default 5000)")
    arguments = parser.parse_args()
    fuzz = settings(
        max_examples=arguments.examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )(given(*INPUTS)(check_garbage))
    fuzz()
    print(f"{arguments.examples} inputs tried: every server survived, and the cluster kept answering")


if __name__ == "__main__":
    main()
