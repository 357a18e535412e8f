"""The twistd plugins nswarm-master and nswarm-node (kept light: twistd scans this file)."""

from twisted.application.service import ServiceMaker

nswarm_master = ServiceMaker(
    "nswarm master",
    "nswarm.master.tap",
    "An nswarm master: routes calls and events between API users and nodes.",
    "nswarm-master",
)
nswarm_node = ServiceMaker(
    "nswarm node",
    "nswarm.node.tap",
    "An nswarm node: relays between the master and local service applications.",
    "nswarm-node",
)
