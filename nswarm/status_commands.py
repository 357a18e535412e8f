"""
The commands by which an operator sees the cluster (issue 11), with their
names and keys beside each, as in L{nswarm.amp_commands}: L{Status} (API
user -> master, admin right needed) and L{NodeStatus} (master -> node). Both
answer one JSON document (docs/operations.md, "The status document").
"""

from __future__ import annotations

from twisted.protocols import amp

from nswarm.amp_commands import InternalError, NotAuthenticated, Payload, PermissionDenied, _codes
from nswarm.core.wire import DOCUMENT, NODE_STATUS, STATUS  # noqa: F401 (re-exported: the names and the key)


class Status(amp.Command):
    """
    API user -> master: the cluster's state, as JSON: the master, its nodes,
    their services, the methods and the events. Only for an identity with
    C{admin = yes} in the master's access file (or every API user, without
    one): else L{PermissionDenied}.
    """

    commandName = STATUS
    arguments = []
    response = [(DOCUMENT, Payload())]
    errors = _codes(PermissionDenied, InternalError)
    fatalErrors = _codes(NotAuthenticated)


class NodeStatus(amp.Command):
    """Master -> node: the node's own part of the status (its services, as JSON)."""

    commandName = NODE_STATUS
    arguments = []
    response = [(DOCUMENT, Payload())]
    errors = _codes(InternalError)
