"""The bytes between a program's process, its worker's template and the caller.

- A *frame* is a 4-byte big-endian signed length and that many bytes (multiprocessing's own
  framing, so the template's frames and `Connection.send_bytes` messages mix on one pipe).
- A program's process writes one frame per program: its *reply*, a MessagePack map (`ok` +
  `value`, or `kind` + `message`, and `seconds`), or an empty frame when it retires.
- The template forwards each reply to the caller, undecoded, behind a fixed binary *outcome
  header* (which program, its wait status, a problem the template saw, its wall time).

MessagePack rather than JSON or pickle: it is about five times faster to encode and twice as
fast to decode as JSON for a walker (floats travel as 8 raw bytes, not decimal text), and unlike
pickle or marshal its decoder builds nothing but dict/list/str/bytes/int/float/bool/None from
untrusted bytes. Encoding is strict (exact types only, so no method of a program's subclass
runs while its result is encoded); decoding refuses extension types. What a decoded value may
hold is then the schema's business (`schemas.py`).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack

FRAME = struct.Struct("!i")
#: The template's header in front of each forwarded reply: program index, the wait status of
#: its process when it died without a reply (0 otherwise), a `PROBLEMS` code, wall seconds.
OUTCOME = struct.Struct("!IiBd")
#: What the template itself saw go wrong with a program: nothing, its wall-clock limit, a reply
#: larger than the limit.
PROBLEMS: tuple[str | None, ...] = (None, "wall", "size")


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload)) + payload


def outcome(index: int, seconds: float, status: int, problem: str | None, body: bytes) -> bytes:
    """One framed outcome message (the template's header, then the reply bytes as sent)."""
    header = OUTCOME.pack(index, status, PROBLEMS.index(problem), seconds)
    return frame(header + body)


def parse_outcome(payload: bytes, expected: int | None) -> tuple[dict[str, Any], bytes] | None:
    """(header, the program process's reply bytes) of one outcome message for the program
    `expected` (the one the worker is running; None when it runs none); None when the
    template's header is malformed or names another program."""
    if expected is None or len(payload) < OUTCOME.size:
        return None
    index, status, problem, seconds = OUTCOME.unpack_from(payload)
    if index != expected or problem >= len(PROBLEMS) or not (math.isfinite(seconds)):
        return None
    header = {"index": index, "status": status, "seconds": max(seconds, 0.0)}
    if PROBLEMS[problem] is not None:
        header["problem"] = PROBLEMS[problem]
    return header, payload[OUTCOME.size :]


def _tuple_as_list(value: Any) -> Any:
    if type(value) is tuple:
        return list(value)
    raise TypeError(f"a {type(value).__name__} is not plain data")


def encode_reply(reply: dict[str, Any]) -> bytes:
    """A program's reply, of exact plain types only (a tuple travels as a list); raises
    TypeError (or OverflowError, ValueError) for anything else, without running its methods."""
    return msgpack.packb(reply, use_bin_type=True, strict_types=True, default=_tuple_as_list)


def _refuse_extension(code: int, data: bytes) -> Any:
    raise ValueError("reply holds a MessagePack extension type")


def decode_reply(body: bytes) -> Any:
    """The value a reply's bytes encode (untrusted bytes: raises ValueError for anything
    malformed, truncated, followed by extra bytes, nested too deep, with a key that is not a
    string, or holding an extension type)."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_refuse_extension)
    except Exception as exc:  # msgpack's own exceptions are not all ValueErrors
        raise ValueError(f"malformed reply ({type(exc).__name__})") from None
