"""The control channel's wire format, shared by the shim and the daemon (which imports it from here).

One ZeroMQ frame per message: b"WLC" + protocol version (one byte) + a JSON object with a "type".
Control messages are small and rare (hello, heartbeats, commands, acks), so JSON costs nothing
measurable and keeps the shim free of a protobuf dependency; the bulk data goes through the ring.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

MAGIC = b"WLC"
PROTOCOL_VERSION = 1
MAX_FRAME = 4 * 1024 * 1024

# shim -> daemon
HELLO = "hello"
HEARTBEAT = "heartbeat"
ACK = "ack"
REGISTER = "register"  # splits or hyperparameters changed after hello
END = "end"  # clean exit: the daemon drains the ring up to `position`, then answers END_OK
CHECKPOINT = "checkpoint"  # a checkpoint file the trainer wrote (or failed to): the daemon journals it
# daemon -> shim
WELCOME = "welcome"
PONG = "pong"
COMMAND = "command"
END_OK = "end_ok"
REJECT = "reject"
WHO = "who"  # "I do not know you": a restarted daemon asks for a hello

Message = dict[str, Any]


class ProtocolError(ValueError):
    """A frame that is not a control message of a version this side speaks."""


def encode(msg: Message, version: int = PROTOCOL_VERSION) -> bytes:
    return MAGIC + bytes([version]) + json.dumps(msg, separators=(",", ":"), default=_default).encode()


def decode(frame: bytes) -> Message:
    if len(frame) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {MAX_FRAME}-byte limit")
    if len(frame) < 4 or frame[:3] != MAGIC:
        raise ProtocolError(f"not a weightslab control frame (starts {frame[:8]!r})")
    if frame[3] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {frame[3]} is not supported (this side speaks {PROTOCOL_VERSION})")
    try:
        msg = json.loads(frame[4:])
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge integers, deep nesting
        raise ProtocolError(f"malformed JSON body: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("message body is not an object with a string 'type'")
    return msg


def _default(obj: Any) -> Any:
    # numpy and torch values: arrays as lists, scalars as numbers
    if getattr(obj, "ndim", 0) > 0 and hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def pack_mask(mask: np.ndarray) -> str:
    """A boolean mask as base64 bits: a million samples cost 167 kB, not megabytes of JSON ids."""
    return base64.b64encode(np.packbits(mask.astype(bool)).tobytes()).decode()


def unpack_mask(text: str, size: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=size)
    return bits.astype(bool)
