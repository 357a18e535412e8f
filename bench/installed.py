"""
Which nswarm a benchmark measures. The harness imports nswarm, and the
cluster's processes (twistd, the services) run the copy that Python finds:
the one installed in the virtualenv, not the source tree beside this file.
A run from a tree whose installed copy is older than its sources would
measure the older code, so L{check} refuses it and says what to run.

`make bench` and `make chaos` reinstall first. With `PYTHONPATH=.` the tree
itself is imported, and there is nothing to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The source tree's package and its twistd plugins, beside bench/.
TREE = Path(__file__).resolve().parent.parent


def _files(root: Path) -> dict[str, bytes]:
    """The files under C{root} (compiled files left out), by their path relative to it, with their contents."""
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def differences(tree: Path, installed: Path) -> list[str]:
    """
    What differs between the package at C{tree} and the one at
    C{installed}: each file that is in one only or whose contents differ,
    by its path under the package, sorted.
    """
    ours, theirs = _files(tree), _files(installed)
    return sorted(name for name in ours.keys() | theirs.keys() if ours.get(name) != theirs.get(name))


def plugin_differences(tree: Path, installed: Path) -> list[str]:
    """The tree's twistd plugins (C{twisted/plugins/*.py} under C{tree}) missing or different in C{installed}."""
    changed = []
    for plugin in sorted((tree / "twisted" / "plugins").glob("*.py")):
        copy = installed / plugin.name
        if not copy.is_file() or copy.read_bytes() != plugin.read_bytes():
            changed.append(f"twisted/plugins/{plugin.name}")
    return changed


def stale(tree: Path = TREE) -> str | None:
    """
    Why the nswarm that this Python imports is not the source tree at
    C{tree} (a sentence that says what to run), or None if it is, or if
    there is no source tree there to compare with.
    """
    import nswarm
    import twisted.plugins

    package = tree / "nswarm"
    installed = Path(nswarm.__file__).resolve().parent
    if not (package / "__init__.py").is_file() or installed == package.resolve():
        return None
    changed = differences(package, installed)
    changed += plugin_differences(tree, Path(twisted.plugins.__file__).resolve().parent)
    if not changed:
        return None
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return (
        f"the nswarm this Python imports ({installed}) is not the source tree's ({package}): {shown} differ, so "
        "the benchmark would measure the installed copy. Run `make bench` (or `make chaos`), which reinstalls it "
        "first, or `make .venv/.installed` and then this command again"
    )


def check() -> None:
    """Exit with L{stale}'s sentence (status 1) if the nswarm this Python imports is not the source tree's."""
    reason = stale()
    if reason is not None:
        sys.exit(f"bench: {reason}")
