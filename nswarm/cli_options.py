"""The option parsing all C{nswarm} commands share."""

from __future__ import annotations

import getopt
import sys

from twisted.python import usage

PROGRAM = "nswarm"


class _Options(usage.Options):
    """Shared behaviour of the C{nswarm} option parsers."""

    def opt_version(self) -> None:
        """Display the nswarm version and exit."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"{PROGRAM} {version('nswarm')}")
        except PackageNotFoundError:
            print(f"{PROGRAM} (not installed)")
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse like Twisted does, but also accept options after the
        arguments (C{nswarm init DIR --force}): GNU-style reordering first.
        """
        argv = sys.argv[1:] if options is None else options
        try:
            opts, args = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        reordered: list[str] = []
        for name, value in opts:
            reordered.append(name)
            if self._takes_value(name):
                reordered.append(value)
        super().parseOptions(reordered + ["--", *args])

    def _takes_value(self, option: str) -> bool:
        if option.startswith("--"):
            return option[2:] + "=" in self.longOpt
        return option[1:2] + ":" in self.shortOpt
