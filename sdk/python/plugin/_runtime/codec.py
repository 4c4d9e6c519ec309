"""msgpack for the SDK's hot paths: what it sends (link frames, pushes, RPC requests) and the
message plane's replies.

`ormsgpack` (Rust) packs a push ~3× and decodes a 100-record bus reply ~2× faster than `msgpack`.
It is optional (neko installs it; a hand-made environment may lack it) and only used where it
gives what `msgpack` gives (`use_bin_type=True`; `raw=False, strict_map_key=False`): anything it
would treat otherwise (subclasses, dataclasses, enums, datetimes, non-string map keys, extension
types) makes it fail, and `msgpack` does the work, with its own result or error. Tests hold the
two to the same bytes and values.

One difference remains, so decoding with it is only for the plane's replies: ormsgpack ignores
bytes after the first object, where msgpack refuses them. Frames from the link are decoded by
msgpack alone (`protocol.decode_payload`), as they must be refused whole when malformed.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

try:
    import ormsgpack
except ImportError:  # pragma: no cover - exercised by the tests that switch it off
    ormsgpack = None  # type: ignore[assignment]

_PACK_OPTIONS = 0
if ormsgpack is not None:
    _PACK_OPTIONS = (
        ormsgpack.OPT_PASSTHROUGH_SUBCLASS
        | ormsgpack.OPT_PASSTHROUGH_DATACLASS
        | ormsgpack.OPT_PASSTHROUGH_DATETIME
        | ormsgpack.OPT_PASSTHROUGH_ENUM
        | ormsgpack.OPT_PASSTHROUGH_UUID
    )

_packers = threading.local()


def packer() -> msgpack.Packer:
    """This thread's msgpack packer (a Packer is not thread-safe; making one per call costs more
    than the packing of a small payload)."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer


def packb(obj: Any) -> bytes:
    """`msgpack.packb(obj, use_bin_type=True)`; TypeError (or ValueError) where that fails."""
    if ormsgpack is not None:
        try:
            return ormsgpack.packb(obj, option=_PACK_OPTIONS)
        except Exception:  # not ormsgpack's to pack as msgpack would: let msgpack decide
            pass
    return packer().pack(obj)


def unpack_reply(data: Any) -> Any:
    """`msgpack.unpackb(data, raw=False, strict_map_key=False)`, with its errors, except that
    bytes after the first object may be ignored (see above): for the message plane's replies."""
    if ormsgpack is not None:
        try:
            return ormsgpack.unpackb(data)
        except Exception:  # malformed, or not ormsgpack's to read as msgpack would
            pass
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
