"""
Declaring a service's handlers, for every front end: the C{@implement} and
C{@subscribe} decorators and the table of handlers a service class
collects from them (L{collect}). Pure: L{nswarm.service.Service} (Twisted)
and L{nswarm.aio.Service} (asyncio) both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, overload

from nswarm.core.names import check_method, check_pattern
from nswarm.errors import InvalidRequest

F = TypeVar("F", bound=Callable[..., Any])


@overload
def implement(name: F) -> F: ...
@overload
def implement(name: str | None = None, *, idempotent: bool = False, concurrency: int = 0) -> Callable[[F], F]: ...
def implement(name: Any = None, *, idempotent: bool = False, concurrency: int = 0) -> Any:
    """
    Mark a method of a service class as the handler of the cluster
    method C{name} (by default the function's own name). Use as C{@implement}
    or C{@implement("orders.create")}. With C{idempotent=True} (the handler
    is safe to run twice), a call lost with its service or node is retried
    once on another implementer, within its deadline. With C{concurrency=N},
    the service runs at most N calls of it at once: the master queues the
    others (or answers Overloaded when its queue is full).
    """
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 0:
        raise ValueError(f"concurrency must be a whole number, 0 (no limit) or more, not {concurrency!r}")
    if callable(name):
        return implement()(name)
    if name is not None and not isinstance(name, str):
        raise TypeError(
            f"@implement takes the cluster method's name as a string, not {type(name).__name__}: "
            "write @implement, or @implement('orders.create')"
        )

    def mark(function: F) -> F:
        method = name or function.__name__
        try:
            check_method(method)
        except InvalidRequest as error:
            raise ValueError(f"@implement on {function.__name__}: {error}") from None
        function.__nswarm_implements__ = method  # type: ignore[attr-defined]
        function.__nswarm_idempotent__ = idempotent  # type: ignore[attr-defined]
        function.__nswarm_concurrency__ = concurrency  # type: ignore[attr-defined]
        return function

    return mark


def subscribe(*events: str) -> Callable[[F], F]:
    """
    Mark a method of a service class as the handler of the events
    matching C{events}: C{handler(event, payload)}. A pattern's dot-separated
    tokens may be C{*} (any one token) or, last, C{>} (one or more).
    """
    if len(events) == 1 and callable(events[0]):
        raise TypeError(
            f"@subscribe needs the events to subscribe to: write @subscribe('orders.created') "
            f"above {getattr(events[0], '__name__', 'the handler')}, not a bare @subscribe"
        )
    if not events:
        raise TypeError("@subscribe needs at least one event: write @subscribe('orders.created')")
    for event in events:
        if not isinstance(event, str):
            raise TypeError(f"@subscribe takes event names as strings, not {type(event).__name__}: {event!r}")
        try:
            check_pattern(event)
        except InvalidRequest as error:
            raise ValueError(f"@subscribe({event!r}): {error}") from None

    def mark(function: F) -> F:
        function.__nswarm_subscribes__ = events  # type: ignore[attr-defined]
        return function

    return mark


def collect(cls: Any, base: type) -> None:
    """
    Fill in C{cls}'s tables from its decorated methods (called from
    C{__init_subclass__} of C{base}, the SDK's service class): inherited
    entries are copied, then C{cls}'s own added. A handler that would
    replace an attribute of C{base} is refused with a TypeError.
    """
    cls.nswarm_methods = dict(cls.nswarm_methods)
    cls.nswarm_limits = dict(cls.nswarm_limits)
    idempotent = set(cls.nswarm_idempotent)
    cls.nswarm_events = {event: list(handlers) for event, handlers in cls.nswarm_events.items()}
    for attribute, value in vars(cls).items():
        method = getattr(value, "__nswarm_implements__", None)
        events = getattr(value, "__nswarm_subscribes__", ())
        if (method is not None or events) and hasattr(base, attribute):
            raise TypeError(
                f"{cls.__name__}.{attribute} would replace {base.__name__}.{attribute}: "
                f"give the handler another name (use @implement({attribute!r}) to keep the method name)"
            )
        if method is not None:
            cls.nswarm_methods[method] = attribute
            if getattr(value, "__nswarm_idempotent__", False):
                idempotent.add(method)
            else:
                idempotent.discard(method)
            cls.nswarm_limits[method] = getattr(value, "__nswarm_concurrency__", 0)
        for event in events:
            cls.nswarm_events.setdefault(event, []).append(attribute)
    cls.nswarm_idempotent = frozenset(idempotent)


class Handlers:
    """
    The handler tables of a service class, filled in from its decorated
    methods as it is defined (L{collect}): the base of both SDKs' C{Service}
    classes. The SDK's own class marks itself with C{nswarm_sdk = True}, so
    that a handler may not replace one of its attributes.
    """

    #: The name the node logs this service by; the class name by default.
    name: ClassVar[str | None] = None
    #: Cluster method name -> name of the handler attribute (filled in from
    #: the decorators; prefixed so that a subclass's own attributes never clash).
    nswarm_methods: ClassVar[dict[str, str]] = {}
    #: Event pattern -> names of the handler attributes.
    nswarm_events: ClassVar[dict[str, list[str]]] = {}
    #: The cluster methods declared idempotent.
    nswarm_idempotent: ClassVar[frozenset[str]] = frozenset()
    #: Cluster method -> the most calls it runs at once (absent: no limit).
    nswarm_limits: ClassVar[dict[str, int]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        sdk = next(klass for klass in cls.__mro__ if vars(klass).get("nswarm_sdk"))
        collect(cls, sdk)
