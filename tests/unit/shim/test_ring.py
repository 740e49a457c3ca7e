"""The bulk channel: a real POSIX shared-memory ring under /dev/shm, written and read back."""

from __future__ import annotations

import itertools
import json
import os
import stat
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from weightslab_shim import records, ring
from weightslab_shim.ring import (
    FLAG_WORDSUM,
    HEADER_SIZE,
    LAYOUT_VERSION,
    MAGIC,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    WORDSUM_MIN,
    CorruptRecord,
    RecordType,
    RingError,
    RingReader,
    RingWriter,
)

CAP = 64 * 1024
WRITE_POSITION_OFFSET = 128
READ_POSITION_OFFSET = 192


def align8(n: int) -> int:
    return (n + 7) & ~7


def record_size(payload_len: int) -> int:
    return align8(RECORD_HEADER_SIZE + payload_len)


class Rings:
    """Writers and readers made by one test, all closed and unlinked at its end."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._writers: list[RingWriter] = []
        self._readers: list[RingReader] = []

    def writer(self, capacity: int = CAP, run_id: str = "run-1") -> RingWriter:
        w = RingWriter(self.prefix, capacity, run_id)
        self._writers.append(w)
        return w

    def reader(self, name: str) -> RingReader:
        r = RingReader(name)
        self._readers.append(r)
        return r

    def close_reader(self, r: RingReader) -> None:
        self._readers.remove(r)
        r.close()

    def close(self) -> None:
        for r in self._readers:
            r.close()
        for w in self._writers:
            w.close(unlink_segment=True)


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"wltest-{uuid.uuid4().hex[:10]}-"
    try:
        yield p
    finally:
        for name in ring.list_rings(p):
            ring.unlink(name)


@pytest.fixture
def rings(prefix: str) -> Iterator[Rings]:
    made = Rings(prefix)
    try:
        yield made
    finally:
        made.close()


def poke(name: str, offset: int, data: bytes) -> None:
    """Write raw bytes into the segment file at `offset` (from the start of the segment)."""
    with open(ring.shm_path(name), "r+b") as f:
        f.seek(offset)
        f.write(data)


def peek(name: str, offset: int, size: int) -> bytes:
    with open(ring.shm_path(name), "rb") as f:
        f.seek(offset)
        return f.read(size)


def drain(reader: RingReader) -> list[tuple[int, int, bytes]]:
    out = []
    for rec in reader.records():
        out.append((rec.type, rec.step, bytes(rec.payload)))
        reader.advance()
    return out


# -- header -------------------------------------------------------------------------------------


def test_reader_sees_header_fields_written_by_writer(rings: Rings) -> None:
    before = time.time()
    w = rings.writer(CAP, run_id="exp-42/ünïcode")
    r = rings.reader(w.name)
    assert r.info.name == w.name
    assert r.info.capacity == CAP == r.capacity
    assert r.info.writer_pid == os.getpid()
    assert r.info.run_id == "exp-42/ünïcode"
    assert before <= r.info.created <= time.time()
    assert (r.read_position, r.write_position, r.pending()) == (0, 0, 0)
    assert r.dropped == (0, 0)
    assert r.written == 0
    assert not r.writer_closed
    assert peek(w.name, 0, 8) == MAGIC
    assert struct.unpack("<II", peek(w.name, 8, 8)) == (LAYOUT_VERSION, HEADER_SIZE)


def test_capacity_is_at_least_64k_and_a_multiple_of_8(rings: Rings) -> None:
    small = rings.writer(1000)
    odd = rings.writer(CAP + 3)
    assert small.capacity == CAP
    assert odd.capacity == CAP + 8
    assert rings.reader(odd.name).capacity == CAP + 8
    assert os.stat(ring.shm_path(odd.name)).st_size == HEADER_SIZE + CAP + 8


def test_long_run_id_is_truncated_to_48_bytes(rings: Rings) -> None:
    w = rings.writer(run_id="r" * 100)
    assert rings.reader(w.name).info.run_id == "r" * 48


def test_writer_closed_flag_reaches_reader(rings: Rings) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    w.mark_closed()
    assert r.writer_closed


# -- records ------------------------------------------------------------------------------------


def test_records_round_trip_in_order_with_step_and_type(rings: Rings) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    sent = [(RecordType.STEP if i % 3 else RecordType.PREVIEW, 1000 + i, f"payload {i}".encode() * i)
            for i in range(50)]
    sent.append((RecordType.STEP, -5, b""))  # empty payloads and negative steps travel too
    for rtype, step, payload in sent:
        assert w.write(rtype, step, payload)
    assert r.written == w.written == len(sent)
    assert r.pending() == sum(record_size(len(p)) for _, _, p in sent)
    assert drain(r) == sent
    assert r.pending() == 0
    assert r.read_position == r.write_position


def test_record_positions_are_the_byte_offsets_of_the_stream(rings: Rings) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    for n in (1, 30, 0, 7):
        w.write(RecordType.STEP, 0, b"x" * n)
    positions = []
    for rec in r.records():
        positions.append(rec.position)
        r.advance()
    assert positions == [0, record_size(1), record_size(1) + record_size(30),
                         record_size(1) + record_size(30) + record_size(0)]


def test_reserved_record_is_invisible_until_commit(rings: Rings) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    view = w.reserve(RecordType.STEP, 5, 4)
    assert view is not None
    view[:] = b"abcd"
    assert r.pending() == 0
    assert list(r.records()) == []
    w.commit()
    assert drain(r) == [(RecordType.STEP, 5, b"abcd")]


def test_records_payload_encoded_straight_into_reserved_view(rings: Rings) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    fields = [("loss", np.arange(10, dtype=np.float32)), ("ids", np.arange(10, dtype=np.int64))]
    prepared = records.prepare(fields)
    view = w.reserve(RecordType.STEP, 3, records.encoded_size(prepared))
    assert view is not None
    records.encode_into(view, prepared)
    w.commit()
    (rec,) = list(r.records())
    decoded = records.decode(rec.payload)
    np.testing.assert_array_equal(decoded["loss"], fields[0][1])
    np.testing.assert_array_equal(decoded["ids"], fields[1][1])
    del decoded, rec
    r.advance()


# -- wrap-around --------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [8, 16, 24, 32, 48])
def test_record_that_does_not_fit_the_tail_wraps_to_the_start(rings: Rings, tail: int) -> None:
    # Tails under a record header (8, 16) are skipped without a PAD header; larger ones get a PAD record.
    w = rings.writer(CAP)
    r = rings.reader(w.name)
    assert w.write(RecordType.STEP, 0, b"a" * (CAP // 2 - RECORD_HEADER_SIZE))
    assert w.write(RecordType.STEP, 1, b"b" * (CAP // 2 - tail - RECORD_HEADER_SIZE))
    assert len(drain(r)) == 2
    assert r.write_position == CAP - tail
    assert w.write(RecordType.STEP, 2, b"c" * 100)
    recs = []
    for rec in r.records():
        recs.append((rec.position, rec.step, bytes(rec.payload)))
        r.advance()
    assert recs == [(CAP, 2, b"c" * 100)]
    assert r.read_position == r.write_position == CAP + record_size(100)


def test_wrap_around_over_many_cycles_loses_and_reorders_nothing(rings: Rings) -> None:
    rng = np.random.default_rng(20240607)
    w = rings.writer(CAP)
    r = rings.reader(w.name)
    sent: list[tuple[int, int, bytes]] = []
    got: list[tuple[int, int, bytes]] = []
    ends: list[tuple[int, int]] = []  # (position, end) of each record read
    refused = 0

    def read_all() -> None:
        for rec in r.records():
            got.append((rec.type, rec.step, bytes(rec.payload)))
            ends.append((rec.position, rec.position + record_size(len(rec.payload))))
            r.advance()

    for i in range(4000):
        payload = rng.bytes(int(rng.integers(0, 3000)))
        rtype = RecordType.PREVIEW if i % 7 == 0 else RecordType.STEP
        while not w.write(rtype, i, payload):
            refused += 1  # the ring is full: the reader makes room, the writer tries again
            read_all()
        sent.append((rtype, i, payload))
        if rng.random() < 0.3:
            read_all()
    read_all()

    assert got == sent
    assert r.write_position > 50 * CAP  # many laps of the ring
    assert r.dropped[0] == w.dropped == refused  # every refused write was counted as a drop
    # No record crosses the end of the data area: the writer padded every tail it could not use.
    assert all(pos % CAP + (end - pos) <= CAP for pos, end in ends)
    wraps = sum(1 for (_, prev_end), (pos, _) in itertools.pairwise(ends) if pos != prev_end)
    assert wraps > 50


# -- full ring ----------------------------------------------------------------------------------


def test_full_ring_drops_the_newest_and_counts_records_and_bytes(rings: Rings) -> None:
    w = rings.writer(CAP)
    r = rings.reader(w.name)
    payload = b"p" * (1024 - RECORD_HEADER_SIZE)  # exactly 1 KiB per record
    accepted = 0
    while w.write(RecordType.STEP, accepted, payload):
        accepted += 1
    assert accepted == CAP // 1024
    for step in range(1000):  # never raises, never blocks: each refused write returns at once
        assert w.write(RecordType.STEP, 10_000 + step, payload) is False
    assert w.reserve(RecordType.STEP, 0, 8) is None
    dropped = 1 + 1000 + 1
    assert w.dropped == dropped
    assert r.dropped == (dropped, (dropped - 1) * 1024 + record_size(8))
    assert r.written == accepted
    # The oldest records are intact; none of the dropped ones appear.
    assert [step for _, step, _ in drain(r)] == list(range(accepted))
    # Once the reader made room, the writer writes again.
    assert w.write(RecordType.STEP, 7, b"again")
    assert drain(r) == [(RecordType.STEP, 7, b"again")]


def test_record_bigger_than_half_the_capacity_is_dropped_and_counted(rings: Rings) -> None:
    w = rings.writer(CAP)
    r = rings.reader(w.name)
    largest = CAP // 2 - RECORD_HEADER_SIZE
    assert w.write(RecordType.STEP, 0, b"x" * largest)
    assert not w.write(RecordType.STEP, 1, b"y" * (largest + 1))
    assert not w.write(RecordType.STEP, 2, b"z" * (10 * CAP))
    assert r.dropped == (2, record_size(largest + 1) + record_size(10 * CAP))
    assert [step for _, step, _ in drain(r)] == [0]


# -- re-attach ----------------------------------------------------------------------------------


def test_reattached_reader_continues_from_stored_read_position(rings: Rings) -> None:
    w = rings.writer()
    for i in range(10):
        w.write(RecordType.STEP, i, f"r{i}".encode())
    first = rings.reader(w.name)
    it = first.records()
    for _ in range(4):
        next(it)
        first.advance()
    next(it)  # read but not advanced: the next reader must see it again
    it.close()
    rings.close_reader(first)

    second = rings.reader(w.name)
    assert [step for _, step, _ in drain(second)] == [4, 5, 6, 7, 8, 9]
    w.write(RecordType.STEP, 10, b"r10")
    rings.close_reader(second)
    third = rings.reader(w.name)
    assert drain(third) == [(RecordType.STEP, 10, b"r10")]


# -- corruption ---------------------------------------------------------------------------------


def test_corrupted_payload_byte_raises_then_skip_continues_with_next_record(rings: Rings) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    for i in range(3):
        w.write(RecordType.STEP, i, bytes([i]) * 40)
    second = record_size(40)
    poke(w.name, HEADER_SIZE + second + RECORD_HEADER_SIZE + 5, b"\xff")

    it = r.records()
    assert next(it).step == 0
    r.advance()
    with pytest.raises(CorruptRecord, match="checksum mismatch") as exc:
        next(it)
    assert exc.value.position == second
    assert r.skip(exc.value.position) == record_size(40)
    assert r.corrupt == 1
    assert drain(r) == [(RecordType.STEP, 2, bytes([2]) * 40)]


def test_corrupted_record_header_skip_resyncs_to_write_position(rings: Rings) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    for i in range(3):
        w.write(RecordType.STEP, i, b"x" * 40)
    second = record_size(40)
    poke(w.name, HEADER_SIZE + second, b"\x00\x00")  # the record magic

    it = r.records()
    assert next(it).step == 0
    r.advance()
    with pytest.raises(CorruptRecord, match="bad record header") as exc:
        next(it)
    lost = r.skip(exc.value.position)
    assert lost == 2 * record_size(40)  # its length cannot be trusted: everything written so far goes
    assert r.read_position == r.write_position
    w.write(RecordType.STEP, 3, b"after")
    assert drain(r) == [(RecordType.STEP, 3, b"after")]


def test_corrupted_length_past_the_write_position_is_refused(rings: Rings) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    w.write(RecordType.STEP, 0, b"x" * 40)
    poke(w.name, HEADER_SIZE + 4, struct.pack("<I", 1000))
    with pytest.raises(CorruptRecord, match="bad record header"):
        list(r.records())
    r.skip(0)
    assert r.pending() == 0


def test_inconsistent_positions_resync_in_one_skip(rings: Rings) -> None:
    w = rings.writer(CAP)
    r = rings.reader(w.name)
    for i in range(300):
        w.write(RecordType.STEP, i, b"x" * 1000)
        drain(r)
    assert r.write_position > 3 * CAP
    poke(w.name, READ_POSITION_OFFSET, struct.pack("<Q", 0))  # a read position the writer never saw
    with pytest.raises(CorruptRecord, match="inconsistent") as exc:
        list(r.records())
    r.skip(exc.value.position)
    assert r.read_position == r.write_position


class SlowHeaderClock:
    """ring's `time`, where the first settle wait is when a late header store becomes visible."""

    def __init__(self, on_first_sleep: Callable[[], None]) -> None:
        self.monotonic = time.monotonic
        self._pending: Callable[[], None] | None = on_first_sleep

    def sleep(self, seconds: float) -> None:
        if self._pending is not None:
            action, self._pending = self._pending, None
            action()


def test_record_whose_header_becomes_visible_late_is_accepted(rings: Rings,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    w.write(RecordType.STEP, 9, b"late header")
    crc_at = HEADER_SIZE + 16
    good_crc = peek(w.name, crc_at, 4)
    poke(w.name, crc_at, bytes(b ^ 0xFF for b in good_crc))  # what a weakly-ordered CPU may show first
    monkeypatch.setattr(ring, "time", SlowHeaderClock(lambda: poke(w.name, crc_at, good_crc)))
    assert drain(r) == [(RecordType.STEP, 9, b"late header")]


def test_changed_step_in_record_header_is_detected(rings: Rings) -> None:
    w = rings.writer()
    r = rings.reader(w.name)
    w.write(RecordType.STEP, 1000, b"payload")
    poke(w.name, HEADER_SIZE + 8, struct.pack("<q", 1000 + (1 << 40)))
    with pytest.raises(CorruptRecord):
        list(r.records())


# -- segments that are not rings ----------------------------------------------------------------


def make_segment(prefix: str, content: bytes) -> str:
    name = f"{prefix}fake.{uuid.uuid4().hex[:6]}"
    fd = os.open(ring.shm_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    return name


def real_header(rings: Rings) -> bytearray:
    w = rings.writer(CAP)
    return bytearray(peek(w.name, 0, HEADER_SIZE))


def expect_ring_error(name: str, *fragments: str) -> None:
    with pytest.raises(RingError) as exc:
        RingReader(name)
    message = str(exc.value)
    assert "\n" not in message
    assert name in message
    for fragment in fragments:
        assert fragment in message


def test_missing_segment_is_a_ring_error(prefix: str) -> None:
    expect_ring_error(f"{prefix}absent", "does not exist")


def test_segment_with_wrong_magic_is_not_a_ring(prefix: str) -> None:
    expect_ring_error(make_segment(prefix, b"NOTARING" + bytes(HEADER_SIZE + CAP - 8)),
                      "not a weightslab ring", "NOTARING")


@pytest.mark.parametrize("size", [0, 100, HEADER_SIZE - 1])
def test_segment_smaller_than_a_header_is_too_small(prefix: str, size: int) -> None:
    expect_ring_error(make_segment(prefix, (MAGIC + bytes(size))[:size]), "too small", f"({size} bytes)")


def test_segment_with_other_layout_version_is_refused(prefix: str, rings: Rings) -> None:
    header = real_header(rings)
    struct.pack_into("<I", header, 8, LAYOUT_VERSION + 1)
    name = make_segment(prefix, bytes(header) + bytes(CAP))
    expect_ring_error(name, f"layout version {LAYOUT_VERSION + 1}", f"reads {LAYOUT_VERSION}")


@pytest.mark.parametrize(("offset", "fmt", "value"), [
    (12, "<I", HEADER_SIZE * 2),  # header size
    (16, "<Q", CAP * 2),  # capacity larger than the segment
    (16, "<Q", CAP - 4),  # capacity not a multiple of 8
])
def test_segment_with_inconsistent_sizes_is_refused(prefix: str, rings: Rings, offset: int, fmt: str,
                                                     value: int) -> None:
    header = real_header(rings)
    struct.pack_into(fmt, header, offset, value)
    expect_ring_error(make_segment(prefix, bytes(header) + bytes(CAP)), "inconsistent sizes")


def test_header_only_segment_with_zero_capacity_is_refused(prefix: str, rings: Rings) -> None:
    header = real_header(rings)
    struct.pack_into("<Q", header, 16, 0)
    expect_ring_error(make_segment(prefix, bytes(header)))


# -- the segment file ---------------------------------------------------------------------------


def test_segment_file_is_private_to_its_owner(rings: Rings) -> None:
    w = rings.writer()
    st = os.stat(ring.shm_path(w.name))
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    assert w.name.startswith(f"{rings.prefix}{os.getpid()}.")
    assert ring.list_rings(rings.prefix) == [w.name]


def test_unlink_removes_the_segment(prefix: str) -> None:
    w = RingWriter(prefix, CAP, "run")
    r = RingReader(w.name)
    w.write(RecordType.STEP, 1, b"still readable")
    w.close(unlink_segment=False)
    assert ring.shm_path(w.name).exists()
    assert drain(r) == [(RecordType.STEP, 1, b"still readable")]
    r.close(unlink_segment=True)
    assert not ring.shm_path(w.name).exists()
    assert ring.list_rings(prefix) == []
    assert ring.unlink(w.name) is False

    w2 = RingWriter(prefix, CAP, "run")
    w2.close(unlink_segment=True)
    assert not ring.shm_path(w2.name).exists()


# -- checksums ----------------------------------------------------------------------------------


def test_small_payloads_use_crc32_and_large_ones_the_word_sum() -> None:
    assert ring.checksum(memoryview(bytes(WORDSUM_MIN - 1)))[1] == 0
    assert ring.checksum(memoryview(bytes(WORDSUM_MIN)))[1] == FLAG_WORDSUM


@pytest.mark.parametrize("index", [0, 1, 7, 8, 4099, WORDSUM_MIN - 1, WORDSUM_MIN + 8, WORDSUM_MIN + 12])
@pytest.mark.parametrize("delta", [1, 0x80])
def test_word_sum_changes_with_any_single_byte(index: int, delta: int) -> None:
    payload = bytearray(np.random.default_rng(index).bytes(WORDSUM_MIN + 13))
    before = ring.checksum(memoryview(payload))
    payload[index] ^= delta
    assert ring.checksum(memoryview(payload)) != before


def test_word_sum_depends_on_the_length() -> None:
    # Trailing zero bytes would add nothing to a plain sum.
    assert ring.checksum(memoryview(bytes(WORDSUM_MIN))) != ring.checksum(memoryview(bytes(WORDSUM_MIN + 8)))


def test_large_record_uses_word_sum_and_a_changed_byte_is_detected(rings: Rings) -> None:
    w = rings.writer(1024 * 1024)
    r = rings.reader(w.name)
    payload = np.random.default_rng(1).bytes(WORDSUM_MIN + 5)
    for step in range(3):
        assert w.write(RecordType.STEP, step, payload)
    flags = RECORD_HEADER.unpack(peek(w.name, HEADER_SIZE, RECORD_HEADER_SIZE))[5]
    assert flags == FLAG_WORDSUM
    assert drain(r)[0] == (RecordType.STEP, 0, payload)  # consumes all three

    for step in range(3, 5):
        w.write(RecordType.STEP, step, payload)
    start = r.read_position % r.capacity
    original = peek(w.name, HEADER_SIZE + start + RECORD_HEADER_SIZE + 1000, 1)
    poke(w.name, HEADER_SIZE + start + RECORD_HEADER_SIZE + 1000, bytes([original[0] ^ 0x10]))
    with pytest.raises(CorruptRecord, match="checksum") as exc:
        list(r.records())
    r.skip(exc.value.position)
    assert drain(r) == [(RecordType.STEP, 4, payload)]


# -- another process ----------------------------------------------------------------------------

CHILD_WRITER = """
import sys
from weightslab_shim.ring import RecordType, RingWriter
w = RingWriter(sys.argv[1], 65536, "child-run")
for i in range(200):
    assert w.write(RecordType.STEP, i, f"from child {i}".encode())
w.mark_closed()
print(w.name, flush=True)
w.close(unlink_segment=False)
"""

CHILD_READER = """
import json, sys
from weightslab_shim.ring import RingReader
r = RingReader(sys.argv[1])
got = []
for rec in r.records():
    got.append([rec.type, rec.step, bytes(rec.payload).decode()])
    r.advance()
r.close()
print(json.dumps({"got": got, "pid": r.info.writer_pid, "run": r.info.run_id}), flush=True)
"""


def test_reader_in_parent_sees_what_a_writer_process_wrote(rings: Rings) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, rings.prefix], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    name = out.strip()
    r = rings.reader(name)  # the writer process is gone; its ring is not
    assert r.info.writer_pid == child.pid
    assert r.info.run_id == "child-run"
    assert r.writer_closed
    assert r.written == 200
    assert drain(r) == [(RecordType.STEP, i, f"from child {i}".encode()) for i in range(200)]


def test_reader_process_sees_what_this_writer_wrote_and_frees_the_space(rings: Rings) -> None:
    w = rings.writer(CAP, run_id="parent-run")
    for i in range(100):
        w.write(RecordType.PREVIEW, i, f"from parent {i}".encode())
    done = subprocess.run([sys.executable, "-c", CHILD_READER, w.name], capture_output=True, text=True,
                          timeout=20, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["got"] == [[RecordType.PREVIEW, i, f"from parent {i}"] for i in range(100)]
    assert result["pid"] == os.getpid()
    assert result["run"] == "parent-run"
    # The child's read position is shared: all but a wrap's padding is free again.
    payload = b"q" * (1024 - RECORD_HEADER_SIZE)
    start = w.dropped
    for i in range(CAP // 1024 - 1):
        assert w.write(RecordType.STEP, i, payload), i
    assert w.dropped == start
