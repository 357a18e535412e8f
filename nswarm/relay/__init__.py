"""
What the two relays, the master and the node, share: the routing state
(L{nswarm.relay.state}, L{nswarm.relay.names}), the forwarding machinery
(L{nswarm.relay.relay}, L{nswarm.relay.gather}) and the AMP adapter of a
peer (L{nswarm.relay.protocol}).
"""
