"""
The daemons' HTTP listener (C{--http}): Prometheus metrics at C{/metrics}
(L{nswarm.web.metrics}), the status document at C{/status.json} and a live
dashboard at C{/} (L{nswarm.web.site}). Each is a view of the relay's own
counters and state, computed when it is asked for.
"""
