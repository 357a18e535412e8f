"""
Method, event and subscription names: what makes one valid, and which
subscription patterns match an event. The rules are the sans-IO core's
(L{nswarm.core.names}, re-exported here); this module adds the relays' index
of patterns by token with its cache.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from nswarm.core.names import check_event, check_method, check_name, check_pattern, matches  # noqa: F401
from nswarm.defaults import MATCH_CACHE_SIZE

T = TypeVar("T")


class _Node:
    """
    One point of the token index, where patterns' tokens diverge or end. A
    node is reached from its parent by its first token (its key there) and
    stands for the tokens after it too (C{tail}), so that a long pattern
    costs one node, not one per token.
    """

    __slots__ = ("tail", "width", "wild", "children", "exact", "rest")

    def __init__(self, tail: list[str]) -> None:
        #: The node's tokens after its key, joined by dots; None if it has none.
        self.tail: str | None = None
        #: How many tokens the node stands for (its key and its tail).
        self.width = 1
        #: Whether its tail has a C{*} token.
        self.wild = False
        self.label(tail)
        #: Next token -> the node it leads to; the key C{*} is the wildcard token.
        self.children: dict[str, _Node] | None = None
        #: (registration number, pattern) of the pattern ending exactly here.
        self.exact: tuple[int, str] | None = None
        #: (registration number, pattern) of the patterns going on with C{>} from here.
        self.rest: list[tuple[int, str]] | None = None

    def label(self, tail: list[str]) -> None:
        """Make C{tail} the node's tokens after its key."""
        self.tail = ".".join(tail) if tail else None
        self.width = 1 + len(tail)
        self.wild = "*" in tail

    def tokens(self, key: str) -> list[str]:
        """The tokens the node stands for, C{key} being its key in its parent."""
        return [key, *self.tail.split(".")] if self.tail is not None else [key]

    def fits(self, tokens: list[str], start: int) -> bool:
        """Whether the node's tail matches C{tokens} from C{start} (the token after its key)."""
        if self.tail is None:
            return True
        end = start + self.width - 1
        if end > len(tokens):
            return False
        if not self.wild:
            return ".".join(tokens[start:end]) == self.tail
        mine = self.tail.split(".")
        return all(wanted == "*" or wanted == token for wanted, token in zip(mine, tokens[start:end], strict=True))

    def empty(self) -> bool:
        """Whether no pattern ends here."""
        return self.exact is None and not self.rest


def _path(pattern: str) -> tuple[list[str], bool]:
    """
    The tokens under which the index files C{pattern}, and whether it ends
    in C{>}. Like L{matches}, tokens after a first C{>} are ignored.
    """
    tokens = pattern.split(".")
    if ">" in tokens:
        return tokens[: tokens.index(">")], True
    return tokens, False


class Matches(Generic[T]):
    """
    For each event name, the values registered under the subscription
    patterns that match it (each value once), computed on first use and
    cached until L{clear}.

    The patterns are indexed by token: a trie whose nodes have a child per
    literal token and a C{*} child, and hold the patterns that end there,
    exactly or in C{>}. A node stands for a run of tokens no other pattern
    branches off (it is compressed), so that the index holds at most about
    two nodes per pattern. Matching an event costs in proportion to its
    tokens (and to the C{*} branches on its way), not to the number of
    patterns. C{patterns} (pattern -> values) is read live for the values:
    L{add} a pattern just put in it, L{discard} one just taken out, and
    L{clear} after changing a pattern's values.
    """

    def __init__(self, patterns: dict[str, list[T]]) -> None:
        self.patterns = patterns
        self._cache: dict[str, list[T]] = {}
        self._root = _Node([])
        self._next = 0
        for pattern in patterns:
            self.add(pattern)

    def __call__(self, event: str) -> list[T]:
        """The values of every pattern matching C{event}, in registration order, each once."""
        found = self._cache.get(event)
        if found is None:
            if len(self._cache) > MATCH_CACHE_SIZE:
                self._cache.clear()
            found = self.find(event)
            self._cache[event] = found
        return found

    def find(self, event: str) -> list[T]:
        """
        What L{__call__} returns for C{event}, not cached: the values of the
        patterns matching it, by the patterns' registration order, then
        each pattern's values' order, each value once.
        """
        tokens = event.split(".")
        count = len(tokens)
        found: list[tuple[int, str]] = []
        todo = [(self._root, 0)]  # a node reached, and the index of the event's next token
        while todo:
            node, index = todo.pop()
            if index == count:
                if node.exact is not None:
                    found.append(node.exact)
                continue
            if node.rest:
                found.extend(node.rest)
            children = node.children
            if children:
                token = tokens[index]
                child = children.get(token)
                if child is not None and (child.tail is None or child.fits(tokens, index + 1)):
                    todo.append((child, index + child.width))
                if token != "*":  # an event's own '*' token is the literal child
                    child = children.get("*")
                    if child is not None and (child.tail is None or child.fits(tokens, index + 1)):
                        todo.append((child, index + child.width))
        if not found:
            return []
        patterns = self.patterns
        if len(found) == 1:
            return list(dict.fromkeys(patterns[found[0][1]]))
        found.sort()
        return list(dict.fromkeys(value for _, pattern in found for value in patterns[pattern]))

    def add(self, pattern: str) -> None:
        """Index C{pattern}, just added to C{patterns} (it comes after every pattern added before)."""
        path, rest = _path(pattern)
        node, index = self._root, 0
        while index < len(path):
            key = path[index]
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(key)
            if child is None:
                node = children[key] = _Node(path[index + 1 :])
                break
            label = child.tokens(key)
            common = 1
            while common < len(label) and index + common < len(path) and label[common] == path[index + common]:
                common += 1
            if common < len(label):  # the pattern branches off inside the child: split it there
                middle = children[key] = _Node(label[1:common])
                child.label(label[common + 1 :])
                middle.children = {label[common]: child}
                child = middle
            node, index = child, index + common
        entry = (self._next, pattern)
        if rest:
            if node.rest is None:
                node.rest = []
            if any(known == pattern for _, known in node.rest):
                return
            node.rest.append(entry)
        elif node.exact is None:
            node.exact = entry
        else:
            return
        self._next += 1
        self._cache.clear()

    def discard(self, pattern: str) -> None:
        """Stop indexing C{pattern}, just taken out of C{patterns}; prune and merge what it leaves."""
        path, rest = _path(pattern)
        node, index = self._root, 0
        trail: list[tuple[_Node, str]] = []
        while index < len(path):
            child = node.children.get(path[index]) if node.children else None
            if child is None or child.tokens(path[index]) != path[index : index + child.width]:
                return
            trail.append((node, path[index]))
            node, index = child, index + child.width
        if rest:
            kept = [entry for entry in node.rest or () if entry[1] != pattern]
            node.rest = kept or None
        elif node.exact is not None and node.exact[1] == pattern:
            node.exact = None
        self._cache.clear()
        while trail and node.empty():
            parent, key = trail.pop()
            siblings = parent.children
            assert siblings is not None
            if not node.children:  # nothing left below: drop it, then look at its parent
                del siblings[key]
                if not siblings:
                    parent.children = None
                node = parent
            else:
                if len(node.children) == 1:  # one way on: merge it with its only child
                    [(next_key, only)] = node.children.items()
                    only.label(node.tokens(key)[1:] + only.tokens(next_key))
                    siblings[key] = only
                break

    def clear(self) -> None:
        """Forget every cached match (the patterns' values changed)."""
        self._cache.clear()
