"""Decoders fed random and mutated input raise only their documented exception, and always return.

    records.decode -> MalformedPayload    wire.decode -> ProtocolError    RingReader.records -> CorruptRecord
"""

from __future__ import annotations

import contextlib
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from weightslab_shim import records, ring, wire
from weightslab_shim.records import MalformedPayload
from weightslab_shim.ring import HEADER_SIZE, RECORD_HEADER_SIZE, CorruptRecord, RecordType, RingReader, RingWriter
from weightslab_shim.wire import ProtocolError

# Deterministic (derandomize) and without an example database, so the suite is repeatable and leaves no files.
FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
RING_FUZZ = settings(FUZZ, max_examples=50)  # a checksum mismatch costs the reader a 5 ms settle wait

CAP = 64 * 1024
WRITE_POSITION_OFFSET = 128
READ_POSITION_OFFSET = 192

# A fixed alphabet (ASCII, separators, NUL, 2-, 3- and 4-byte UTF-8) needs no Unicode table to be built.
TEXT = st.text(alphabet="az09 _/\x1f\x00\"\\é✓損🙂", max_size=12)
SUPPORTED = st.sampled_from([np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
                             np.uint8, np.uint16, np.uint32, np.uint64, np.bool_])
ARRAYS = SUPPORTED.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                                      max_side=5)))
FIELDS = st.lists(st.tuples(TEXT, ARRAYS), max_size=5)
MUTATIONS = st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
                     min_size=1, max_size=4)


def mutate(data: bytes, mutations: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, xor in mutations:
        if out:
            out[index % len(out)] ^= xor
    return bytes(out)


# -- records.decode -----------------------------------------------------------------------------


def decode_or_malformed(payload: bytes) -> dict[str, np.ndarray] | None:
    try:
        decoded = records.decode(payload)
    except MalformedPayload:
        return None
    assert all(isinstance(v, np.ndarray) for v in decoded.values())
    return decoded


@FUZZ
@given(st.binary(max_size=400))
def test_records_decode_of_random_bytes_raises_only_malformed_payload(data: bytes) -> None:
    decode_or_malformed(data)


@FUZZ
@given(FIELDS, MUTATIONS, st.integers(min_value=0, max_value=64))
def test_records_decode_of_mutated_payload_raises_only_malformed_payload(
        fields: list[tuple[str, np.ndarray]], mutations: list[tuple[int, int]], cut: int) -> None:
    payload = records.encode(fields)
    decode_or_malformed(mutate(payload, mutations))
    decode_or_malformed(payload[: max(len(payload) - cut, 0)])


@FUZZ
@given(FIELDS)
def test_records_round_trip_any_supported_arrays(fields: list[tuple[str, np.ndarray]]) -> None:
    decoded = records.decode(records.encode(fields))
    expected = dict(fields)  # a repeated name keeps its last array
    assert list(decoded) == list(expected)
    for name, arr in expected.items():
        assert decoded[name].dtype == arr.dtype
        assert decoded[name].shape == arr.shape
        assert decoded[name].tobytes() == arr.tobytes()


# -- wire.decode --------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12)
MESSAGES = st.builds(lambda kind, body: {**body, "type": kind}, TEXT, st.dictionaries(TEXT, JSON_VALUES, max_size=5))


def decode_or_protocol_error(frame: bytes) -> wire.Message | None:
    try:
        msg = wire.decode(frame)
    except ProtocolError as exc:
        assert "\n" not in str(exc)
        return None
    assert isinstance(msg, dict) and isinstance(msg["type"], str)
    return msg


@FUZZ
@given(st.binary(max_size=200))
def test_wire_decode_of_random_bytes_raises_only_protocol_error(data: bytes) -> None:
    decode_or_protocol_error(data)


@FUZZ
@given(st.binary(max_size=200))
def test_wire_decode_of_random_body_raises_only_protocol_error(body: bytes) -> None:
    decode_or_protocol_error(wire.MAGIC + bytes([wire.PROTOCOL_VERSION]) + body)


@FUZZ
@given(MESSAGES, MUTATIONS)
def test_wire_decode_of_mutated_frame_raises_only_protocol_error(msg: dict[str, Any],
                                                                 mutations: list[tuple[int, int]]) -> None:
    decode_or_protocol_error(mutate(wire.encode(msg), mutations))


@FUZZ
@given(MESSAGES)
def test_wire_round_trips_any_json_message(msg: dict[str, Any]) -> None:
    assert wire.decode(wire.encode(msg)) == msg


# -- RingReader.records -------------------------------------------------------------------------


@contextlib.contextmanager
def ring_pair() -> Iterator[tuple[RingWriter, RingReader]]:
    prefix = f"wlfuzz-{uuid.uuid4().hex[:10]}-"
    writer = RingWriter(prefix, CAP, "fuzz")
    reader = None
    try:
        reader = RingReader(writer.name)
        yield writer, reader
    finally:
        if reader is not None:
            reader.close()
        writer.close(unlink_segment=True)
        for name in ring.list_rings(prefix):
            ring.unlink(name)


def poke(name: str, offset: int, data: bytes) -> None:
    with open(ring.shm_path(name), "r+b") as f:
        f.seek(offset)
        f.write(data)


def drain_with_skips(reader: RingReader) -> list[tuple[int, int, int, bytes]]:
    """Read everything, skipping corrupt records as the daemon does; fail if it never ends."""
    got = []
    for _ in range(10_000):
        try:
            for rec in reader.records():
                got.append((rec.position, rec.type, rec.step, bytes(rec.payload)))
                reader.advance()
        except CorruptRecord as exc:
            reader.skip(exc.position)
            continue
        assert reader.read_position == reader.write_position
        return got
    raise AssertionError("the reader never caught up with the write position")


@RING_FUZZ
@given(st.binary(min_size=0, max_size=2048), st.integers(min_value=0, max_value=CAP),
       st.integers(min_value=0, max_value=CAP), st.integers(min_value=0, max_value=CAP - 1))
def test_ring_reader_of_random_data_raises_only_corrupt_record(data: bytes, start: int, length: int,
                                                               where: int) -> None:
    with ring_pair() as (writer, reader):
        poke(writer.name, HEADER_SIZE + where, data[: CAP - where])
        poke(writer.name, READ_POSITION_OFFSET, struct.pack("<Q", start))
        poke(writer.name, WRITE_POSITION_OFFSET, struct.pack("<Q", start + length))
        drain_with_skips(reader)


def record_size(payload_len: int) -> int:
    return (RECORD_HEADER_SIZE + payload_len + 7) & ~7


@RING_FUZZ
@given(st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=25),
       st.integers(min_value=0, max_value=CAP // 2), MUTATIONS)
def test_ring_reader_of_mutated_records_raises_only_corrupt_record(lengths: list[int], filler: int,
                                                                   mutations: list[tuple[int, int]]) -> None:
    with ring_pair() as (writer, reader):
        # Start at an arbitrary place so records may wrap.
        writer.write(RecordType.STEP, -1, bytes(filler))
        drain_with_skips(reader)
        start = reader.read_position
        originals = []
        for i, n in enumerate(lengths):
            payload = bytes([(i * 31 + j) % 251 for j in range(n)])
            if writer.write(RecordType.STEP, i, payload):
                originals.append((i, payload))
        expected = drain_with_skips(reader)  # the records as read before any damage, with their positions
        assert [(step, payload) for _, _, step, payload in expected] == originals
        end = reader.write_position
        poke(writer.name, READ_POSITION_OFFSET, struct.pack("<Q", start))  # read it all again

        # Damage bytes inside the written stream (headers, payloads, padding), wherever it wrapped.
        damaged = sorted({start + index % (end - start): xor for index, xor in mutations}.items())
        with open(ring.shm_path(writer.name), "r+b") as f:
            for position, xor in damaged:
                f.seek(HEADER_SIZE + position % CAP)
                byte = f.read(1)[0]
                f.seek(HEADER_SIZE + position % CAP)
                f.write(bytes([byte ^ xor]))
        got = drain_with_skips(reader)

        # Records wholly before the first damaged byte come back intact, in order.
        first_bad = damaged[0][0]
        intact = [r for r in expected if r[0] + record_size(len(r[3])) <= first_bad]
        assert got[: len(intact)] == intact
        positions = [r[0] for r in got]
        assert positions == sorted(set(positions))
        assert all(start <= p < end for p in positions)
