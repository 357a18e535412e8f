"""The twistd plugin nswarm-service (kept light: twistd scans this file)."""

from twisted.application.service import ServiceMaker

nswarm_service = ServiceMaker(
    "nswarm service",
    "nswarm.service_tap",
    "An nswarm service app: runs a Service subclass (package.module:ClassName) beside its node.",
    "nswarm-service",
)
