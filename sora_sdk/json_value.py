"""JSON conversion and serialisation with the official Sora Python SDK's rules.

The official SDK converts Python values passed as ``metadata``,
``signaling_notify_metadata``, codec parameters, ... into a boost::json tree
and later writes that tree as compact JSON.  This module reproduces both steps:

* :func:`to_json_value` applies the official acceptance rules and returns a
  plain JSON tree made of ``None``, ``bool``, ``int``, ``float``, ``str``,
  ``list`` and ``dict`` (insertion ordered, ``str`` keys).
* :func:`dumps` writes any such tree exactly as boost::json's serializer does
  (no whitespace, UTF-8 written raw, floats in the exponent form ``1.5E0``).
"""

from __future__ import annotations

import json.encoder
import math
import struct
from typing import Any

__all__ = ["C_INT_MIN", "C_INT_MAX", "to_json_value", "dumps", "format_double"]

#: Range of a C ``int``: the only integers the official conversion accepts.
C_INT_MIN = -(2 ** 31)
C_INT_MAX = 2 ** 31 - 1

# Python's escaper without ensure_ascii escapes exactly what boost::json does:
# '"', '\\', \b \f \n \r \t as short escapes, other control characters as
# \u00xx (lowercase hex); everything else, non-ASCII included, is left raw.
_quote_string = json.encoder.encode_basestring


def _is_float32(value: float) -> bool:
    """True when ``value`` survives a round trip through a C ``float``."""
    try:
        narrowed = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return False
    return narrowed == value  # NaN never compares equal, so it is rejected


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def to_json_value(obj: Any, param_name: str) -> Any:
    """Convert ``obj`` to a JSON tree using the official SDK's rules.

    Accepted: ``None``, ``bool``, ``int`` within the C ``int`` range, ``float``
    exactly representable as a 32-bit float, ``str``, ``list`` and ``dict``
    with ``str`` keys (recursively).  Anything else raises
    ``TypeError("Invalid JSON value in <param_name>")``; a dict key that is not
    a ``str`` raises ``RuntimeError("std::bad_cast")`` like the official SDK.
    The result is a fresh tree of plain built-in types (subclasses such as
    ``IntEnum`` or ``OrderedDict`` are turned into ``int`` / ``dict``).
    """

    def invalid() -> TypeError:
        return TypeError("Invalid JSON value in %s" % param_name)

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):  # before int: bool is an int subclass
            return bool(value)
        if isinstance(value, int):
            if C_INT_MIN <= value <= C_INT_MAX:
                return int(value)
            raise invalid()
        if isinstance(value, float):
            if _is_float32(value):
                return float(value)
            raise invalid()
        if isinstance(value, str):
            if _is_utf8_encodable(value):
                return str(value)
            raise invalid()
        if isinstance(value, list):
            return [convert(item) for item in value]
        if isinstance(value, dict):
            result = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise RuntimeError("std::bad_cast")
                result[str(key)] = convert(item)
            return result
        raise invalid()

    return convert(obj)


def format_double(value: float) -> str:
    """Format a float the way boost::json does (shortest digits, ``E`` form).

    ``1.5`` -> ``1.5E0``, ``0.25`` -> ``2.5E-1``, ``16777216.0`` ->
    ``1.6777216E7``, ``0.0`` -> ``0E0``.  Like boost::json's default
    (standard-conforming) output, infinities become ``1e99999`` /
    ``-1e99999`` and NaN becomes ``null``.
    """
    if math.isnan(value):
        return "null"
    if math.isinf(value):
        return "-1e99999" if value < 0 else "1e99999"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0E0"
    # repr() gives the shortest digit string that round-trips, as Ryu does.
    text = repr(abs(value))
    mantissa, _, exponent_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    exponent = int(exponent_text or "0") + len(whole) - 1
    significant = digits.lstrip("0")
    exponent -= len(digits) - len(significant)
    significant = significant.rstrip("0")
    head, tail = significant[0], significant[1:]
    return "%s%s%sE%d" % (sign, head, "." + tail if tail else "", exponent)


def _write(value: Any, out: list) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_quote_string(value))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(format_double(value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("JSON object keys must be str, not %s" % type(key).__name__)
            if not first:
                out.append(",")
            first = False
            out.append(_quote_string(key))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def dumps(tree: Any) -> str:
    """Serialise a JSON tree as compact text, byte-for-byte like boost::json.

    ``tree`` is made of ``None``, ``bool``, ``int`` (any size), ``float``,
    ``str``, ``list``/``tuple`` and ``dict`` with ``str`` keys; dict insertion
    order is the key order on the wire.  No acceptance rules are applied here
    (use :func:`to_json_value` for user input).
    """
    out: list = []
    _write(tree, out)
    return "".join(out)
