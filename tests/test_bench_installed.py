"""Tier 1: a benchmark refuses to measure an installed nswarm that is not its source tree's (bench/installed.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import nswarm

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from installed import check, differences, plugin_differences, stale  # noqa: E402

#: The package this Python imports, which the copies below are compared with.
IMPORTED = Path(nswarm.__file__).resolve().parent


def package(root: Path, files: dict[str, str]) -> Path:
    """A package directory under C{root} holding C{files} (relative path: text)."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_same_files_do_not_differ(tmp_path: Path) -> None:
    files = {"__init__.py": "", "relay/turn.py": "x = 1\n", "web/dashboard.js": "let a;\n"}
    tree, copy = package(tmp_path / "tree", files), package(tmp_path / "copy", files)
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "turn.cpython-311.pyc").write_bytes(b"\0")
    assert differences(tree, copy) == []


def test_a_changed_a_missing_and_an_extra_file_are_named(tmp_path: Path) -> None:
    tree = package(tmp_path / "tree", {"__init__.py": "", "codec.py": "new\n", "relay/turn.py": "x = 1\n"})
    copy = package(tmp_path / "copy", {"__init__.py": "", "codec.py": "old\n", "gone.py": ""})
    assert differences(tree, copy) == ["codec.py", "gone.py", "relay/turn.py"]


def test_a_plugin_that_is_missing_or_changed_is_named(tmp_path: Path) -> None:
    tree = package(tmp_path / "tree", {"twisted/plugins/a.py": "a\n", "twisted/plugins/b.py": "b\n"})
    installed = package(tmp_path / "site", {"a.py": "a\n"})
    assert plugin_differences(tree, installed) == ["twisted/plugins/b.py"]
    (installed / "b.py").write_text("old b\n")
    assert plugin_differences(tree, installed) == ["twisted/plugins/b.py"]
    (installed / "b.py").write_text("b\n")
    assert plugin_differences(tree, installed) == []


def test_a_tree_whose_package_is_the_imported_one_is_not_stale(tmp_path: Path) -> None:
    shutil.copytree(IMPORTED, tmp_path / "nswarm")
    assert stale(tmp_path) is None


def test_a_tree_that_differs_from_the_imported_package_is_stale_and_says_what_to_run(tmp_path: Path) -> None:
    shutil.copytree(IMPORTED, tmp_path / "nswarm")
    (tmp_path / "nswarm" / "codec.py").write_text("# changed after the install\n")
    reason = stale(tmp_path)
    assert reason is not None
    assert "codec.py differ" in reason and "make bench" in reason and str(IMPORTED) in reason


def test_no_source_tree_beside_the_harness_is_nothing_to_compare(tmp_path: Path) -> None:
    assert stale(tmp_path) is None


def test_check_exits_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import installed

    monkeypatch.setattr(installed, "stale", lambda: "it is stale: run make bench")
    with pytest.raises(SystemExit) as exited:
        check()
    assert exited.value.code == "bench: it is stale: run make bench"
