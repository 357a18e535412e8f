"""
A headless Chromium, driven from the command line (no WebDriver): it loads a
page, runs its scripts, and prints the DOM or writes a screenshot. Each run
has a profile of its own in a temporary directory and a bound on its time;
every process it started is killed when it is done.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser

#: The names a Chromium binary goes by.
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary on the PATH, or None."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def headless(chromium: str, url: str, *options: str, timeout: float = 60.0) -> str:
    """
    Run C{chromium} headless on C{url} with C{options} (such as
    C{--dump-dom}); return what it printed. It fails if Chromium exits
    with an error or takes more than C{timeout} seconds.
    """
    with tempfile.TemporaryDirectory(prefix="nswarm-chromium-", ignore_cleanup_errors=True) as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        command += [f"--user-data-dir={profile}", *options, url]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its helpers share its process group, which is killed below
        )
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.communicate()
            raise AssertionError(f"{chromium} took more than {timeout:g}s on {url}")
        finally:
            _kill_group(process.pid)
    if process.returncode != 0:
        raise AssertionError(f"{chromium} exited with status {process.returncode} on {url}:\n{err[-3000:]}")
    return out


def _kill_group(leader: int) -> None:
    try:
        os.killpg(leader, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Tables(HTMLParser):
    """
    The rows of a dashboard's tables, from its DOM: C{rows[TABLE_ID][ROW]}
    is C{{column: text}} for the row whose C{data-name} is C{ROW}.
    """

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, dict[str, str]]] = {}
        self._table: str | None = None
        self._row: dict[str, str] | None = None
        self._column: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = attributes.get("id") or ""
            self.rows.setdefault(self._table, {})
        elif tag == "tr" and self._table is not None and attributes.get("data-name") is not None:
            self._row = self.rows[self._table].setdefault(attributes["data-name"] or "", {})
        elif tag == "td" and self._row is not None:
            self._column = attributes.get("data-col")
            if self._column is not None:
                self._row[self._column] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._column = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._column is not None:
            self._row[self._column] += data
