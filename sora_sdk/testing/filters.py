"""Forwarding filters of the local Sora server: which senders' tracks a receiver gets.

A connect message may carry ``forwarding_filter`` (one filter object) and/or
``forwarding_filters`` (a list of them); both are honoured, the single one
first. A filter::

    {"name": "...",            # optional str
     "priority": 0,            # optional int 0..2147483647, default 0; lower is evaluated first
     "action": "block",        # optional "block" (default) or "allow"
     "rules": [                # required, non-empty: OR-groups ...
        [{"field": "kind", "operator": "is_in", "values": ["video"]},   # ... of AND rules
         {"field": "client_id", "operator": "is_not_in", "values": ["x"]}]],
     "version": "...",         # optional str (kept, not interpreted)
     "metadata": ...}          # optional, any JSON (kept, not interpreted)

``field`` is ``connection_id``, ``client_id`` (both of the *sending*
connection) or ``kind`` (``"audio"``/``"video"``, the only values allowed for
it); ``operator`` is ``is_in`` or ``is_not_in``; ``values`` a non-empty list of
strings. A rule ``is_in`` holds when the track's field value is one of
``values``, ``is_not_in`` when it is none of them.

Decision for one receiver and one sender track (sender connection_id,
client_id, kind):

1. A filter *matches* the track when at least one of its OR-groups has every
   rule true.
2. Filters are evaluated in ascending ``priority``; equal priorities keep the
   order of the connect message (``forwarding_filter`` before the items of
   ``forwarding_filters``).
3. The first matching filter decides: ``block`` -> the track is not
   forwarded to this receiver, ``allow`` -> it is.
4. If no filter matches: the track is blocked when the receiver has at least
   one ``allow`` filter (an allow-list forwards only what it names), else it
   is forwarded (block-lists only block what they name).
5. No filters at all: everything is forwarded.

So a single block filter blocks exactly its matches, a single allow filter
forwards exactly its matches, and a lower-priority-number filter wins over a
later one that matches the same track.

Validation: anything else (unknown field/operator/action, empty or
non-list ``rules``/groups/``values``, non-string values, a ``kind`` value
other than audio/video, a non-int/bool/out-of-range ``priority``, a
non-string ``name``/``version``, a filter that is not an object) raises
:class:`FilterError`; the session then rejects the connect (close code 4000,
reason ``INVALID-FORWARDING-FILTER``). Unknown extra keys of a filter or a
rule are ignored. ``null`` for either connect field means "not given".

Filters are fixed for the life of the connection (the local server has no
API to change them). Everything here is pure: no I/O, no locks.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

FIELDS = ("connection_id", "client_id", "kind")
OPERATORS = ("is_in", "is_not_in")
ACTIONS = ("block", "allow")
KINDS = ("audio", "video")
MAX_PRIORITY = 2 ** 31 - 1
DEFAULT_PRIORITY = 0


class FilterError(ValueError):
    """A malformed forwarding filter (the message says which part and why)."""


class Rule:
    __slots__ = ("field", "operator", "values")

    def __init__(self, field: str, operator: str, values: Iterable[str]) -> None:
        self.field = field
        self.operator = operator
        self.values = frozenset(values)

    def holds(self, track: Dict[str, Optional[str]]) -> bool:
        inside = track.get(self.field) in self.values
        return inside if self.operator == "is_in" else not inside

    def __repr__(self) -> str:
        return "Rule(%s %s %s)" % (self.field, self.operator, sorted(self.values))


class Filter:
    __slots__ = ("name", "priority", "action", "rules", "version", "metadata", "order")

    def __init__(self, action: str, rules: Sequence[Sequence[Rule]], priority: int = DEFAULT_PRIORITY,
                 name: Optional[str] = None, version: Optional[str] = None, metadata: Any = None,
                 order: int = 0) -> None:
        self.action = action
        self.rules: Tuple[Tuple[Rule, ...], ...] = tuple(tuple(group) for group in rules)
        self.priority = priority
        self.name = name
        self.version = version
        self.metadata = metadata
        self.order = order  # position in the connect message (tie-break for equal priorities)

    def matches(self, track: Dict[str, Optional[str]]) -> bool:
        return any(all(rule.holds(track) for rule in group) for group in self.rules)

    def __repr__(self) -> str:
        return "Filter(%s prio=%d %r)" % (self.action, self.priority, self.rules)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_rule(obj: Any, where: str = "rule") -> Rule:
    if not isinstance(obj, dict):
        raise FilterError("%s: a rule must be an object" % where)
    field = obj.get("field")
    if field not in FIELDS:
        raise FilterError("%s: field must be one of %s, not %r" % (where, ", ".join(FIELDS), field))
    operator = obj.get("operator")
    if operator not in OPERATORS:
        raise FilterError("%s: operator must be one of %s, not %r" % (where, ", ".join(OPERATORS), operator))
    values = obj.get("values")
    if not isinstance(values, list) or not values:
        raise FilterError("%s: values must be a non-empty list of strings" % where)
    for value in values:
        if not isinstance(value, str):
            raise FilterError("%s: values must be strings, not %r" % (where, value))
        if field == "kind" and value not in KINDS:
            raise FilterError("%s: a kind value must be audio or video, not %r" % (where, value))
    return Rule(field, operator, values)


def parse_filter(obj: Any, order: int = 0, where: str = "forwarding_filter") -> Filter:
    """One filter object -> :class:`Filter`; :class:`FilterError` if it is malformed."""
    if not isinstance(obj, dict):
        raise FilterError("%s: a filter must be an object" % where)
    action = obj.get("action", "block")
    if action is None:
        action = "block"
    if action not in ACTIONS:
        raise FilterError("%s: action must be block or allow, not %r" % (where, action))
    priority = obj.get("priority", DEFAULT_PRIORITY)
    if priority is None:
        priority = DEFAULT_PRIORITY
    if not _is_int(priority) or not 0 <= priority <= MAX_PRIORITY:
        raise FilterError("%s: priority must be an integer 0..%d, not %r" % (where, MAX_PRIORITY, priority))
    for key in ("name", "version"):
        if obj.get(key) is not None and not isinstance(obj.get(key), str):
            raise FilterError("%s: %s must be a string" % (where, key))
    rules = obj.get("rules")
    if not isinstance(rules, list) or not rules:
        raise FilterError("%s: rules must be a non-empty list of rule lists" % where)
    groups: List[List[Rule]] = []
    for i, group in enumerate(rules):
        if not isinstance(group, list) or not group:
            raise FilterError("%s: rules[%d] must be a non-empty list of rules" % (where, i))
        groups.append([parse_rule(rule, "%s: rules[%d][%d]" % (where, i, j)) for j, rule in enumerate(group)])
    return Filter(action, groups, priority, obj.get("name"), obj.get("version"), obj.get("metadata"), order)


def parse_filters(forwarding_filter: Any = None, forwarding_filters: Any = None) -> Tuple[Filter, ...]:
    """The two connect fields -> the filters in evaluation order (see the module docstring)."""
    parsed: List[Filter] = []
    if forwarding_filter is not None:
        parsed.append(parse_filter(forwarding_filter, 0, "forwarding_filter"))
    if forwarding_filters is not None:
        if not isinstance(forwarding_filters, list):
            raise FilterError("forwarding_filters must be a list of filter objects")
        for i, item in enumerate(forwarding_filters):
            parsed.append(parse_filter(item, len(parsed), "forwarding_filters[%d]" % i))
    parsed.sort(key=lambda f: (f.priority, f.order))
    return tuple(parsed)


def from_connect(message: Dict[str, Any]) -> Tuple[Filter, ...]:
    """The filters of a connect message (empty when it has none); :class:`FilterError` if malformed."""
    return parse_filters(message.get("forwarding_filter"), message.get("forwarding_filters"))


def allows(filters: Sequence[Filter], sender_connection_id: str, sender_client_id: Optional[str],
           kind: str) -> bool:
    """Whether a track (`kind`) of the sender is forwarded to a receiver with `filters`
    (:class:`Filter` objects, as :func:`parse_filters` returns them; evaluated by priority,
    then by their order)."""
    if not filters:
        return True
    track = {"connection_id": sender_connection_id, "client_id": sender_client_id, "kind": kind}
    for item in sorted(filters, key=lambda f: (f.priority, f.order)):
        if item.matches(track):
            return item.action == "allow"
    return not any(item.action == "allow" for item in filters)


def forwarded(receiver_session, sender_session, kind: str) -> bool:
    """:func:`allows` for two sessions of the local server (the receiver's parsed filters)."""
    filters = getattr(receiver_session, "forwarding_filters", ())
    if not filters:
        return True
    return allows(filters, sender_session.connection_id, sender_session.client_id, kind)
