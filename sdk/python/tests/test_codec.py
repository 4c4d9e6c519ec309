"""The SDK's fast msgpack path (`plugin._runtime.codec`) against msgpack itself: the same bytes
when packing, the same values (and the same failures) when reading, with and without ormsgpack."""

import dataclasses
import datetime
import enum
import random
import uuid

import msgpack
import pytest

from plugin._runtime import codec


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


@dataclasses.dataclass
class Point:
    x: int


def _ints() -> list:
    edges = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
    return edges + [-n for n in edges if n <= 2**63] + [-32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1]


def _strings() -> list:
    return ["", "a", "é" * 10, "x" * 31, "x" * 32, "x" * 255, "x" * 256, "x" * 65535, "x" * 65536, "日本語"]


def _random_value(rng: random.Random, depth: int = 0):
    leaves = [None, True, False, 0.5, -1e300, float("inf"), rng.choice(_ints()), rng.choice(_strings()), b"\x00\xff" * rng.randint(0, 40), bytearray(b"ab")]
    if depth > 2 or rng.random() < 0.4:
        return rng.choice(leaves)
    if rng.random() < 0.5:
        return [_random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 15, 16, 17]))]
    return {rng.choice(_strings()[:4]) + str(i): _random_value(rng, depth + 1) for i in range(rng.choice([0, 1, 15, 16, 17]))}


def _reference_pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _reference_unpack(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _outcome(fn, arg):
    try:
        value = fn(arg)
    except Exception as exc:
        return ("error", type(exc))
    return ("ok", value, type(value))


ODD_VALUES = [
    {1: "int key"},
    {b"k": "bytes key"},
    (1, "tuple"),
    Color.RED,
    Name("sub"),
    {"nested": [Color.RED, Name("x")]},
    2**64,
    -(2**63) - 1,
    Point(1),
    datetime.datetime(2026, 1, 1),
    datetime.date(2026, 1, 1),
    uuid.UUID(int=5),
    memoryview(b"mv"),
    object(),
    {"set": {1, 2}},
    msgpack.ExtType(3, b"e"),
]


@pytest.fixture(params=["ormsgpack", "msgpack only"])
def fast(request, monkeypatch):
    if request.param == "ormsgpack":
        if codec.ormsgpack is None:
            pytest.skip("ormsgpack is not installed")
    else:
        monkeypatch.setattr(codec, "ormsgpack", None)
    return request.param


def test_packing_gives_msgpacks_bytes_or_its_error(fast):
    rng = random.Random(7)
    values = [_random_value(rng) for _ in range(200)] + _ints() + _strings() + ODD_VALUES
    for value in values:
        expected = _outcome(_reference_pack, value)
        got = _outcome(codec.packb, value)
        if expected[0] == "ok":
            assert got == expected, value
        else:
            assert got[0] == "error" and got[1] is expected[1], (value, got, expected)


def test_replies_read_as_msgpack_reads_them(fast):
    rng = random.Random(11)
    packed = [_reference_pack(_random_value(rng)) for _ in range(200)]
    odd = [
        _reference_pack({1: 2}),
        _reference_pack({b"k": 2}),
        _reference_pack(msgpack.ExtType(5, b"xy")),
        _reference_pack(msgpack.Timestamp(1, 2)),
        b"\xca\x3f\x80\x00\x00",  # float32
        b"\x82\xa1a\x01\xa1a\x02",  # a key twice
        b"\xa2\xff\xfe",  # not UTF-8
        b"\xc1",  # reserved
        b"",
        _reference_pack({"a": "bcd"})[:-1],
        b"\x91" * 3000 + b"\xc0",  # deeper than either allows
    ]
    for data in packed + odd:
        expected = _outcome(_reference_unpack, data)
        got = _outcome(codec.unpack_reply, data)
        if expected[0] == "ok":
            assert got == expected, data[:40]
        else:
            assert got[0] == "error", (data[:40], got)
