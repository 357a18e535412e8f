"""
Every default of nswarm in one place: ports, timeouts, limits and backoff.

The daemons' options, the SDKs' keyword arguments and the docs'
configuration tables all take their defaults from here.
"""

from __future__ import annotations

# -- ports and paths -----------------------------------------------------------

#: TCP port of the master's node server (nodes connect here, mutual TLS).
NODE_PORT = 6666
#: TCP port of the master's api server (API users connect here, TLS).
API_PORT = 6667
#: The address the master listens on.
INTERFACE = "0.0.0.0"
#: Where a node serves its local services, and the socket's permissions.
SERVICE_SOCKET = "~/.nswarm/node.sock"
SERVICE_SOCKET_MODE = 0o600

# -- time ------------------------------------------------------------------------

#: A call's deadline, in seconds, when its caller gives none.
CALL_TIMEOUT = 30.0
#: The longest deadline a call may ask for, in seconds.
MAX_CALL_TIMEOUT = 24 * 3600.0
#: Seconds a connection may take to authenticate before it is closed.
AUTH_TIMEOUT = 10.0
#: Seconds between heartbeats, both ways on every authenticated connection.
HEARTBEAT = 10.0
#: Heartbeat intervals without any box from the peer after which it is taken as gone.
HEARTBEAT_MISSES = 3
#: Seconds an API client may take to open its TLS connection.
CONNECT_TIMEOUT = 30.0
#: How often a relay with requests in flight looks for passed deadlines.
SWEEP_INTERVAL = 0.05
#: On stop, seconds a node or service lets calls in flight finish after withdrawing.
DRAIN_TIMEOUT = 10.0
#: Seconds a call to a method nobody implements waits at the master for an implementer.
GRACE = 0.0
#: Seconds between two warnings about events dropped for one subscriber.
DROP_LOG_INTERVAL = 10.0

# -- reconnecting ------------------------------------------------------------------

#: First wait, in seconds, before reconnecting; each failure makes it 1.5 times longer, up to the maximum.
RECONNECT_INITIAL_DELAY = 0.25
#: Up to this many seconds of random jitter are added to each wait.
RECONNECT_JITTER = 0.25
#: Longest wait between a node's attempts to reach the master.
NODE_RECONNECT_MAX_DELAY = 30.0
#: Longest wait between a service's attempts to reach its node.
SERVICE_RECONNECT_MAX_DELAY = 5.0

# -- sizes and counts -------------------------------------------------------------------

#: The largest call arguments, result or event payload accepted, in bytes.
MAX_PAYLOAD = 16 * 1024 * 1024
#: Parts of a streamed result that may be on their way to a caller before it asks for more (its window), and the
#: largest window a caller may ask for: what a slow reader makes the cluster hold for it is bounded by this.
STREAM_WINDOW = 16
MAX_STREAM_WINDOW = 1024
#: What a box may hold beyond its payload (names, tags, other keys), in bytes.
BOX_OVERHEAD = 64 * 1024
#: Keys a box may hold beyond those its payload is split into.
EXTRA_KEYS = 64
#: The largest box a connection may send before it has authenticated.
UNAUTHENTICATED_MAX_BOX = 64 * 1024
#: Bytes of events that may wait for a subscriber that is not reading them.
SUBSCRIBER_BUFFER = 8 * 1024 * 1024
#: Bytes of answers and events waiting for a peer that is not reading past which it is no longer read from.
READ_PAUSE_BACKLOG = 1024 * 1024
#: Bytes of anything (answers, calls, events) that may wait for a peer that is not reading; past it it is closed.
SEND_BUFFER = 64 * 1024 * 1024
#: Calls one connection may have in flight at once; more are answered Overloaded.
CALLS_IN_FLIGHT = 10_000
#: Methods one connection may implement, and patterns it may subscribe to; more get LimitExceeded.
METHODS_PER_CONNECTION = 10_000
PATTERNS_PER_CONNECTION = 10_000
#: The same at the master, for a node: it registers what all its services do.
METHODS_PER_NODE = 100_000
#: Most calls the master holds back at once (waiting for a busy implementer or the grace period).
QUEUE_SIZE = 1000
#: Failed authentications a source address may make at once, then one every AUTH_FAILURE_EVERY seconds.
AUTH_FAILURE_BURST = 10
AUTH_FAILURE_EVERY = 1.0
#: Source addresses remembered for throttling and quiet logging (least recently seen forgotten first).
AUTH_FAILURE_SOURCES = 10_000
#: Longest method, event or subscription name, in characters.
MAX_NAME_LENGTH = 255
#: Event names whose matching subscribers are remembered (the cache is emptied past it).
MATCH_CACHE_SIZE = 10_000
#: Names a registration log line quotes; it gives the count of the rest.
LOGGED_NAMES = 5

#: Methods the metrics and the status count by name; past it they fold into the label "_other".
METRICS_METHODS = 1000
#: Seconds each node has to send its part of the cluster's status.
STATUS_TIMEOUT = 5.0
#: Seconds after the master starts during which calls to methods nobody implements yet wait (within their
#: deadlines) and events are held: its nodes are reconnecting (the master's --startup-window).
STARTUP_WINDOW = 3.0
#: The most bytes of events the master holds during its startup window; past it they are handed on at once.
EARLY_EVENTS_BYTES = 64 * 1024 * 1024
#: Seconds a peer with calls pending may be silent before it is probed, and before it is ejected from balancing.
PROBE_AFTER = 0.5
EJECT_AFTER = 1.0

# -- reconnecting after a loss, and a client's authentication ----------------------------

#: Longest wait, in seconds, between a node's or a service's attempts to reconnect once a connection that was up
#: is lost (each wait is a random part, half to all, of its backoff step, so this bounds the jitter too). Under a
#: second, so that with the handshake and the registration a node is back within a second of its master listening.
RECONNECT_LOST_MAX_DELAY = 0.8
#: Seconds a node (a service) waits for the master (its node) to answer its TLS handshake and authentication
#: before it closes the connection and tries again.
CLIENT_AUTH_TIMEOUT = 10.0
#: While reconnecting fast after a loss, seconds between two warnings about failed attempts with the same cause.
RECONNECT_LOG_INTERVAL = 10.0
#: Connections the master's listeners queue before accepting (Twisted's default, 50, drops the handshakes of a
#: thousand nodes reconnecting at once: TCP retries them only 1 s and 3 s later).
LISTEN_BACKLOG = 1024
#: Connections a listener has accepted and that have not authenticated yet (their TLS handshakes under way), past
#: which it accepts no more until one has: the rest wait in the listen queue. Without a bound, ten thousand nodes
#: reconnecting at once share the master's CPU until none finishes within its authentication deadline.
HANDSHAKES_AT_ONCE = 500
#: Seconds of a reactor turn a TLS listener spends on the reads of connections not yet authenticated (TLS
#: handshakes, Authenticate; at least one read a turn), and the most such reads a turn: the open connections' turns
#: stay short while a crowd registers (a read costs from a tenth of a millisecond to several on a busy machine).
HANDSHAKE_TURN_BUDGET = 0.004
HANDSHAKE_READS_PER_TURN = 8
#: Seconds a draining master keeps its connections at least, answering new calls Draining: those already on their
#: way when the drain began are refused (and sent again by the SDK) instead of lost with a closed connection.
DRAIN_QUIET = 0.2

# -- TLS -----------------------------------------------------------------------------------

#: The TLS 1.2 cipher suites every listener and client accepts (OpenSSL syntax): forward-secret key exchange and
#: authenticated encryption only. TLS 1.3's own suites are all AEAD and are always allowed.
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!DSS"
