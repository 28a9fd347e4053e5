"""Tests for sora_sdk.json_value: official acceptance rules and boost::json output."""

from __future__ import annotations

import collections
import enum
import json

import pytest

from sora_sdk.json_value import dumps, format_double, to_json_value


# ---------------------------------------------------------------- acceptance

@pytest.mark.parametrize("value", [
    None, True, False, 0, -5, 2 ** 31 - 1, -(2 ** 31), 1.5, 0.25, 16777216.0, 0.0, -0.0,
    "", "ü日", [], {}, [1, [2, [3]]], {"a": {"b": [None, True]}}, float("inf"),
])
def test_accepted_values(value):
    converted = to_json_value(value, "metadata")
    assert converted == value
    assert type(converted) is type(value)


@pytest.mark.parametrize("value", [
    {"f": 1.1}, {"h": 1e20}, 1.1, [1.25, 0.1], {"big": 2 ** 31}, -(2 ** 31) - 1,
    {"a": (1, 2)}, {"a": b"x"}, (1,), b"x", bytearray(b"x"), set(), object(), 1e39,
    float("nan"), 1 + 2j, "\ud800",
])
def test_rejected_values(value):
    with pytest.raises(TypeError) as info:
        to_json_value(value, "metadata")
    assert str(info.value) == "Invalid JSON value in metadata"
    assert type(info.value) is TypeError


def test_param_name_in_message():
    with pytest.raises(TypeError, match="^Invalid JSON value in video_vp9_params$"):
        to_json_value([[0.1]], "video_vp9_params")


@pytest.mark.parametrize("value", [{1: "a"}, {"ok": {None: 1}}, [{(1,): 2}]])
def test_non_str_key_is_bad_cast(value):
    with pytest.raises(RuntimeError) as info:
        to_json_value(value, "metadata")
    assert str(info.value) == "std::bad_cast"


def test_subclasses_become_plain_types():
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    tree = to_json_value(collections.OrderedDict([("c", Color.RED), ("n", Name("x"))]), "m")
    assert type(tree) is dict and type(tree["c"]) is int and type(tree["n"]) is str
    assert dumps(tree) == '{"c":1,"n":"x"}'


def test_conversion_copies_and_keeps_order():
    source = {"z": [1], "a": {"y": 2, "b": 3}}
    tree = to_json_value(source, "m")
    assert tree == source and tree is not source and tree["z"] is not source["z"]
    assert list(tree) == ["z", "a"] and list(tree["a"]) == ["y", "b"]


# ---------------------------------------------------------------- floats

@pytest.mark.parametrize("value,text", [
    (1.5, "1.5E0"), (0.25, "2.5E-1"), (16777216.0, "1.6777216E7"), (0.0, "0E0"),
    (-0.0, "-0E0"), (20.5, "2.05E1"), (1.0, "1E0"), (100.0, "1E2"), (-2.5, "-2.5E0"),
    (1e20, "1E20"), (1.5e-7, "1.5E-7"), (0.1, "1E-1"), (123456.789, "1.23456789E5"),
    (5e-324, "5E-324"), (1.7976931348623157e308, "1.7976931348623157E308"),
    (float("inf"), "1e99999"), (float("-inf"), "-1e99999"), (float("nan"), "null"),
])
def test_format_double(value, text):
    assert format_double(value) == text


@pytest.mark.parametrize("value", [0.1, 1 / 3, 2.5e-300, 6.02214076e23, 12345678901234567.0,
                                   -987.654, 3.0e-5, 9007199254740993.0])
def test_format_double_round_trips(value):
    assert float(format_double(value)) == value


# ---------------------------------------------------------------- dumps

def test_dumps_compact_and_raw_utf8():
    tree = {"f": 1.5, "g": 0.25, "h": 16777216.0, "z": 0.0, "i": -5, "j": 2147483647,
            "t": True, "u": "ü日本", "n": None, "l": [], "o": {}}
    assert dumps(tree) == ('{"f":1.5E0,"g":2.5E-1,"h":1.6777216E7,"z":0E0,"i":-5,'
                           '"j":2147483647,"t":true,"u":"ü日本","n":null,"l":[],"o":{}}')


def test_dumps_escapes_like_boost():
    text = dumps({"k\"ey": "a\"b\\c/d\b\f\n\r\t\x00\x01\x1f\x7f\u2028é"})
    assert text == '{"k\\"ey":"a\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0000\\u0001\\u001f\x7f\u2028é"}'
    assert json.loads(text) == {"k\"ey": "a\"b\\c/d\b\f\n\r\t\x00\x01\x1f\x7f\u2028é"}


def test_dumps_large_ints_and_tuples():
    assert dumps([2 ** 70, -(2 ** 63), (1, 2)]) == \
        "[1180591620717411303424,-9223372036854775808,[1,2]]"


@pytest.mark.parametrize("bad", [{1: 2}, {"a": object()}, b"x", {"s": {1, 2}}])
def test_dumps_rejects_non_json(bad):
    with pytest.raises(TypeError):
        dumps(bad)


def test_dumps_matches_python_json_for_non_float_trees():
    tree = {"type": "answer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", "list": [1, None, "x"]}
    assert dumps(tree) == json.dumps(tree, separators=(",", ":"), ensure_ascii=False)
