"""The node daemon: the upstream connection to the master and the local service server."""
