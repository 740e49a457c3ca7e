"""The control channel's frames: b"WLC" + version + one JSON object."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weightslab_shim import wire
from weightslab_shim.wire import MAGIC, MAX_FRAME, PROTOCOL_VERSION, ProtocolError

ALL_TYPES = [wire.HELLO, wire.HEARTBEAT, wire.ACK, wire.REGISTER, wire.END, wire.WELCOME, wire.PONG,
             wire.COMMAND, wire.END_OK, wire.REJECT]


def frame(body: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    return MAGIC + bytes([version]) + body


def decode_error(data: bytes) -> str:
    with pytest.raises(ProtocolError) as exc:
        wire.decode(data)
    message = str(exc.value)
    assert message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_every_message_type_round_trips(kind: str) -> None:
    msg = {"type": kind, "step": 12, "ids": [1, 2, 3], "name": "ünï ✓", "nested": {"ok": True, "x": None}}
    data = wire.encode(msg)
    assert data.startswith(MAGIC + bytes([PROTOCOL_VERSION]))
    assert wire.decode(data) == msg


def test_numpy_scalars_are_sent_as_plain_json() -> None:
    msg = {"type": wire.HEARTBEAT, "step": np.int64(7), "loss": np.float32(0.5), "paused": np.bool_(True)}
    decoded = wire.decode(wire.encode(msg))
    assert decoded == {"type": wire.HEARTBEAT, "step": 7, "loss": 0.5, "paused": True}
    assert type(decoded["step"]) is int


def test_numpy_arrays_are_sent_as_json_lists() -> None:
    msg = {"type": wire.ACK, "ids": np.arange(3), "one": np.array([5])}
    assert wire.decode(wire.encode(msg)) == {"type": wire.ACK, "ids": [0, 1, 2], "one": [5]}


def test_value_that_is_not_serialisable_raises_type_error() -> None:
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        wire.encode({"type": wire.ACK, "x": object()})


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    head = wire.encode({"type": wire.COMMAND, "pad": ""})
    data = wire.encode({"type": wire.COMMAND, "pad": "a" * (MAX_FRAME - len(head))})
    assert len(data) == MAX_FRAME
    assert len(wire.decode(data)["pad"]) == MAX_FRAME - len(head)


def test_oversize_frame_is_refused_before_parsing() -> None:
    message = decode_error(b"X" * (MAX_FRAME + 1))  # not even a control frame: the size is checked first
    assert str(MAX_FRAME + 1) in message
    assert str(MAX_FRAME) in message


@pytest.mark.parametrize("data", [b"", b"WL", b"WLC", b"XYZ\x01{}", b"wlc\x01{\"type\":\"hello\"}",
                                  b"{\"type\":\"hello\"}"])
def test_wrong_magic_or_short_frame_is_not_a_control_frame(data: bytes) -> None:
    assert "not a weightslab control frame" in decode_error(data)


def test_wrong_protocol_version_names_both_versions() -> None:
    data = wire.encode({"type": wire.HELLO}, version=PROTOCOL_VERSION + 1)
    message = decode_error(data)
    assert f"protocol version {PROTOCOL_VERSION + 1}" in message
    assert f"speaks {PROTOCOL_VERSION}" in message


@pytest.mark.parametrize("body", [b"", b"{", b"{\"type\": }", b"not json", b"\xff\xfe\x00garbage",
                                  b"{\"type\":\"a\"} trailing"])
def test_malformed_json_is_a_protocol_error(body: bytes) -> None:
    assert "malformed JSON body" in decode_error(frame(body))


@pytest.mark.parametrize("body", [b"[]", b"[{\"type\":\"hello\"}]", b"\"hello\"", b"null", b"42", b"{}",
                                  b"{\"type\": 3}", b"{\"type\": null}", b"{\"kind\": \"hello\"}"])
def test_body_that_is_not_an_object_with_a_string_type_is_refused(body: bytes) -> None:
    json.loads(body)  # valid JSON: it is the shape that is wrong
    assert "not an object with a string 'type'" in decode_error(frame(body))


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


def test_deeply_nested_json_is_a_protocol_error() -> None:
    decode_error(frame(b"[" * 100_000))


def test_integer_with_too_many_digits_is_a_protocol_error() -> None:
    decode_error(frame(b'{"type":"heartbeat","step":' + b"1" * 5000 + b"}"))
