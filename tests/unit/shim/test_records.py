"""The ring record payload: named arrays encoded once, decoded as views."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest

from weightslab_shim import records
from weightslab_shim.records import FIELD, MalformedPayload

SUPPORTED = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
             np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]


def sample_array(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    if dtype is np.bool_:
        return (np.arange(n) % 3 == 0).reshape(shape)
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    values = np.linspace(float(info.min) / 4, float(info.max) / 4, n) if n else np.empty(0)
    return values.astype(dtype).reshape(shape)


def assert_same(decoded: np.ndarray, original: np.ndarray) -> None:
    assert decoded.dtype == original.dtype
    assert decoded.shape == original.shape
    assert decoded.tobytes() == np.ascontiguousarray(original).tobytes()


def round_trip(fields: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    payload = records.encode(fields)
    assert len(payload) % 8 == 0
    assert len(payload) == records.encoded_size(records.prepare(fields))
    return records.decode(payload)


@pytest.mark.parametrize("dtype", SUPPORTED, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (2, 3, 4), (0,), (3, 0, 2)], ids=str)
def test_every_supported_dtype_and_shape_round_trips(dtype: type, shape: tuple[int, ...]) -> None:
    arr = sample_array(dtype, shape)
    decoded = round_trip([("x", arr)])
    assert list(decoded) == ["x"]
    assert_same(decoded["x"], arr)


def test_special_float_values_survive_bit_for_bit() -> None:
    arr = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32)
    assert_same(round_trip([("f", arr)])["f"], arr)


def test_many_fields_keep_their_names_and_order() -> None:
    fields = [(f"field{i}", np.arange(i, dtype=np.int16)) for i in range(20)]
    decoded = round_trip(fields)
    assert list(decoded) == [name for name, _ in fields]
    for name, arr in fields:
        assert_same(decoded[name], arr)


@pytest.mark.parametrize("name", ["", "loss", "損失/精度 🙂", "sig\x1ftrain\x1floss", "a" * 300, "\x00inside"])
def test_names_with_unicode_and_separators_round_trip(name: str) -> None:
    arr = np.array([1.5, 2.5], dtype=np.float64)
    decoded = round_trip([(name, arr), ("after", np.array([7], dtype=np.int8))])
    assert list(decoded) == [name, "after"]
    assert_same(decoded[name], arr)
    assert decoded["after"].tolist() == [7]


@pytest.mark.parametrize("make", [
    lambda a: a[::2],
    lambda a: a.T,
    lambda a: a[:, 1],
    lambda a: np.asfortranarray(a),
    lambda a: a[::-1, ::-3],
], ids=["strided", "transposed", "column", "fortran", "reversed"])
def test_non_contiguous_input_is_encoded_in_logical_order(make: Callable[[np.ndarray], np.ndarray]) -> None:
    base = np.arange(48, dtype=np.float64).reshape(6, 8)
    arr = make(base)
    assert not arr.flags.c_contiguous or arr.ndim == 1
    decoded = round_trip([("v", arr)])["v"]
    np.testing.assert_array_equal(decoded, arr)
    assert decoded.shape == arr.shape


def test_unsupported_dtypes_are_cast_to_a_supported_one() -> None:
    big_endian = np.array([1, -2, 300], dtype=">i4")
    big_float = np.array([0.5, -1.25], dtype=">f8")
    decoded = round_trip([("i", big_endian), ("f", big_float)])
    assert decoded["i"].dtype == np.int64
    assert decoded["i"].tolist() == [1, -2, 300]
    assert decoded["f"].dtype == np.float64
    assert decoded["f"].tolist() == [0.5, -1.25]


def test_non_numeric_arrays_are_left_out_not_an_error() -> None:
    decoded = round_trip([("labels", np.array(["cat", "dog"])), ("objs", np.array([{}, None])),
                          ("x", np.arange(2))])
    assert list(decoded) == ["x"]


def test_decoded_arrays_are_views_of_the_payload() -> None:
    buf = bytearray(records.encode([("x", np.zeros(4, dtype=np.int32))]))
    arr = records.decode(memoryview(buf))["x"]
    struct.pack_into("<i", buf, len(buf) - 16, 99)
    assert arr.tolist() == [99, 0, 0, 0]


def test_encode_into_writes_the_same_bytes_as_encode() -> None:
    fields = [("a", np.arange(5, dtype=np.uint16)), ("b", np.array(3.5))]
    prepared = records.prepare(fields)
    buf = bytearray(records.encoded_size(prepared))
    records.encode_into(memoryview(buf), prepared)
    assert bytes(buf) == records.encode(fields)


def test_empty_payload_decodes_to_no_fields() -> None:
    assert records.decode(b"") == {}


# -- malformed payloads --------------------------------------------------------------------------

VALID = records.encode([("first", np.arange(6, dtype=np.float32).reshape(2, 3)),
                        ("second", np.arange(3, dtype=np.int64)), ("third", np.array(True))])


def test_every_truncation_raises_malformed_payload_or_decodes_a_prefix_of_fields() -> None:
    malformed = 0
    for cut in range(len(VALID)):
        try:
            decoded = records.decode(VALID[:cut])
        except MalformedPayload:
            malformed += 1
        else:
            assert list(decoded) == ["first", "second", "third"][: len(decoded)]
    assert malformed > len(VALID) // 2


def test_truncated_field_header_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="truncated field header"):
        records.decode(VALID[:5])


def test_unknown_dtype_code_is_malformed() -> None:
    garbled = bytearray(VALID)
    garbled[2] = 200
    with pytest.raises(MalformedPayload, match="unknown dtype code 200"):
        records.decode(bytes(garbled))


def test_name_that_is_not_utf8_is_malformed() -> None:
    payload = records.encode([("abc", np.zeros(1, dtype=np.int8))])
    garbled = bytearray(payload)
    garbled[FIELD.size + 4] = 0xFF  # first name byte, after one shape dimension
    with pytest.raises(MalformedPayload, match="not utf-8"):
        records.decode(bytes(garbled))


def test_shape_that_does_not_match_the_byte_count_is_malformed() -> None:
    garbled = bytearray(VALID)
    struct.pack_into("<I", garbled, FIELD.size, 3)  # first dimension 2 -> 3
    with pytest.raises(MalformedPayload, match="does not match"):
        records.decode(bytes(garbled))


def test_field_running_past_the_payload_is_malformed() -> None:
    garbled = bytearray(VALID)
    garbled[3] = 250  # ndim
    with pytest.raises(MalformedPayload, match="runs past the payload"):
        records.decode(bytes(garbled))


def test_data_byte_count_past_the_payload_is_malformed() -> None:
    payload = records.encode([("x", np.zeros(4, dtype=np.uint8))])
    with pytest.raises(MalformedPayload):
        records.decode(payload[:-8])


def test_malformed_payload_is_a_value_error_with_one_line() -> None:
    with pytest.raises(ValueError) as exc:
        records.decode(b"\x01\x00\xff\x00\x00\x00\x00\x00")
    assert isinstance(exc.value, MalformedPayload)
    assert "\n" not in str(exc.value)


def test_shape_whose_element_count_overflows_is_malformed() -> None:
    head = FIELD.pack(1, 0, 4, 0) + struct.pack("<4I", 65536, 65536, 65536, 65536) + b"x"
    payload = head + bytes(-len(head) % 8)
    with pytest.raises(MalformedPayload):
        records.decode(payload)


# -- text and json helpers ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "plain", "ünïcødé ✓ 🙂", "line\nbreak\x1fsep"])
def test_text_round_trips_through_a_uint8_field(value: str) -> None:
    arr = records.text(value)
    assert arr.dtype == np.uint8
    assert arr.tobytes() == value.encode()
    assert records.as_text(round_trip([("t", arr)])["t"]) == value


def test_json_field_round_trips_a_mapping() -> None:
    value = {"lr": 0.001, "batch_size": 32, "name": "adam ✓", "betas": [0.9, 0.999], "nested": {"on": True}}
    arr = records.json_field(value)
    assert arr.dtype == np.uint8
    assert records.as_json(round_trip([("hp", arr)])["hp"]) == value


def test_json_field_accepts_numpy_floats() -> None:
    arr = records.json_field({"lr": np.float32(0.5), "momentum": np.float64(0.25)})
    assert records.as_json(arr) == {"lr": 0.5, "momentum": 0.25}
