"""The master daemon: the node server, the api server and the routing between them."""
