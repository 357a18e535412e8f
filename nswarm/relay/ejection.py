"""
Outlier ejection: a peer that lets calls wait while nothing at all comes
from it (a SIGSTOPped node or service, a blocked reactor) is taken out of
balancing within about a second, long before its heartbeats give it up,
and brought back as soon as anything arrives from it again (in the manner
of Envoy's outlier detection and Finagle's failure accrual).

The relay's deadline sweep calls L{Ejection.check} with the peers that have
calls pending. A peer silent for L{probe_after} seconds is probed (a
Heartbeat with an C{_ask}: any nswarm peer answers it at once); one still
silent at L{eject_after} is ejected. A busy peer whose reactor is free
answers the probe and is never ejected. Pure: the caller passes the time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nswarm import defaults


class Ejection:
    """Which peers are ejected, and how long each peer with calls pending has been silent."""

    def __init__(self, probe_after: float = defaults.PROBE_AFTER, eject_after: float = defaults.EJECT_AFTER) -> None:
        self.probe_after = probe_after
        self.eject_after = eject_after
        #: The ejected peers, with the count of boxes heard from them when they were ejected.
        self.ejected: dict[Any, int] = {}
        #: Peers with calls pending: (boxes heard from them, since when that count has not moved, probed).
        self._silent: dict[Any, tuple[int, float, bool]] = {}

    def check(self, callees: Iterable[Any], now: float) -> tuple[list[Any], list[Any], list[Any]]:
        """
        Look at C{callees} (the peers with calls pending) and at the ejected
        peers; return the peers to probe now, those to eject now, and those
        back (something came from them since they were ejected).
        """
        back = [peer for peer, heard in self.ejected.items() if peer.boxes_received != heard]
        for peer in back:
            del self.ejected[peer]
        probe, eject = [], []
        silent: dict[Any, tuple[int, float, bool]] = {}
        for peer in callees:
            heard = peer.boxes_received
            last = self._silent.get(peer)
            if last is None or last[0] != heard:
                silent[peer] = (heard, now, False)
                continue
            _, since, probed = last
            if now - since >= self.eject_after and peer not in self.ejected:
                self.ejected[peer] = heard
                eject.append(peer)
            elif now - since >= self.probe_after and not probed:
                probe.append(peer)
                probed = True
            silent[peer] = (heard, since, probed)
        self._silent = silent
        return probe, eject, back

    def forget(self, peer: Any) -> None:
        """C{peer} is gone."""
        self.ejected.pop(peer, None)
        self._silent.pop(peer, None)
