"""The generated Studio protocol matches shared/STUDIO-WIRE.md name for name and number for number.

The contract document is parsed, not copied, so a drift on either side fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from weightslabd.proto import experiment_service_pb2

REPO = Path(__file__).resolve().parents[3]
CONTRACT = Path(__file__).resolve().parents[4] / "shared" / "STUDIO-WIRE.md"
PROTO_DIR = REPO / "protos"
GENERATED_DIR = REPO / "daemon" / "weightslabd" / "proto"

# Messages the contract leaves to us ("a message of your design").
OUR_DESIGN_MESSAGES = {"CategoricalTag"}
# Enum values the contract asks us to add without fixing a number.
OUR_DESIGN_ENUM_VALUES = {"AgentProviderType": {"PROVIDER_OLLAMA"}}

FDP = descriptor_pb2.FieldDescriptorProto
SCALAR_TYPES = {
    "double": FDP.TYPE_DOUBLE,
    "float": FDP.TYPE_FLOAT,
    "int32": FDP.TYPE_INT32,
    "int64": FDP.TYPE_INT64,
    "uint32": FDP.TYPE_UINT32,
    "uint64": FDP.TYPE_UINT64,
    "sint32": FDP.TYPE_SINT32,
    "sint64": FDP.TYPE_SINT64,
    "fixed32": FDP.TYPE_FIXED32,
    "fixed64": FDP.TYPE_FIXED64,
    "sfixed32": FDP.TYPE_SFIXED32,
    "sfixed64": FDP.TYPE_SFIXED64,
    "bool": FDP.TYPE_BOOL,
    "string": FDP.TYPE_STRING,
    "bytes": FDP.TYPE_BYTES,
}


# ----------------------------------------------------------------------------------------------
# The contract, as parsed from the markdown
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    name: str
    number: int
    label: str  # "", "optional", "repeated" or "map"
    type: str | None  # a scalar, message or enum name; None: "a message of your design"
    key_type: str | None = None  # map fields only
    oneof: str | None = None


@dataclass(frozen=True)
class RpcSpec:
    name: str
    request: str
    response: str
    server_streaming: bool


@dataclass
class Contract:
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    # A message may be described twice (main list and extensions): each description must hold.
    messages: list[tuple[str, list[FieldSpec]]] = field(default_factory=list)
    rpcs: list[RpcSpec] = field(default_factory=list)


_FIELD_START = re.compile(r",\s*(?=\w+=\d+:)")
_FIELD = re.compile(
    r"^(?P<name>\w+)=(?P<number>\d+):\s*(?P<label>optional\s+|repeated\s+)?"
    r"(?P<type>map<\s*\w+\s*,\s*\w+\s*>|\w+)\s*(?:\(oneof (?P<oneof>\w+)\))?$"
)
_DESIGN_FIELD = re.compile(r"^(?P<name>\w+)=(?P<number>\d+)\s*\(a message of your design[^)]*\)$")
_BULLET = re.compile(r"^(?P<indent>\s*)- `(?P<name>\w+)`(?P<qualifier>[^:]*):\s*(?P<body>.*)$")
_ENUM_VALUE = re.compile(r"\b([A-Z][A-Z0-9_]*)=(\d+)\b")


def _parse_field(text: str) -> FieldSpec:
    text = text.strip()
    design = _DESIGN_FIELD.match(text)
    if design:
        return FieldSpec(design["name"], int(design["number"]), "", None)
    m = _FIELD.match(text)
    if m is None:
        raise ValueError(f"cannot parse contract field {text!r}")
    type_text = m["type"]
    label = (m["label"] or "").strip()
    map_match = re.fullmatch(r"map<\s*(\w+)\s*,\s*(\w+)\s*>", type_text)
    if map_match:
        return FieldSpec(m["name"], int(m["number"]), "map", map_match[2], key_type=map_match[1])
    return FieldSpec(m["name"], int(m["number"]), label, type_text, oneof=m["oneof"])


def _parse_fields(body: str) -> list[FieldSpec]:
    body = body.strip()
    if body in ("", "(empty)"):
        return []
    return [_parse_field(part) for part in _FIELD_START.split(body)]


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        else:
            current.append(line)
    return sections


def _logical_lines(lines: list[str]) -> Iterator[str]:
    """Joins wrapped bullet continuations so every bullet and table row is one line."""
    pending: str | None = None
    for line in lines:
        stripped = line.strip()
        starts_item = stripped.startswith(("- ", "|")) or not stripped
        if pending is not None and not starts_item and line.startswith(" "):
            pending += " " + stripped
            continue
        if pending is not None:
            yield pending
        pending = line.rstrip()
    if pending is not None:
        yield pending


def _table_rows(lines: list[str]) -> Iterator[list[str]]:
    for line in lines:
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in ("RPC", "") or set(cells[0]) <= {"-"}:
            continue
        yield cells


def _rpc_from_row(cells: list[str]) -> RpcSpec:
    streaming = cells[3]
    if streaming not in ("", "server"):
        raise ValueError(f"unexpected streaming column {streaming!r} for {cells[0]}")
    return RpcSpec(cells[0], cells[1], cells[2], streaming == "server")


def parse_contract(text: str) -> Contract:
    sections = _sections(text)
    contract = Contract()

    for line in sections["Enums"]:
        bullet = _BULLET.match(line)
        if bullet:
            contract.enums[bullet["name"]] = {k: int(v) for k, v in _ENUM_VALUE.findall(bullet["body"])}

    for line in _logical_lines(sections["Messages (field: number, label and type; `optional` marks proto3 "
                                        "explicit presence; oneof groups named)"]):
        bullet = _BULLET.match(line)
        if bullet:
            contract.messages.append((bullet["name"], _parse_fields(bullet["body"])))

    rpc_heading = next(h for h in sections if h.startswith("RPCs"))
    contract.rpcs.extend(_rpc_from_row(cells) for cells in _table_rows(sections[rpc_heading]))

    extensions = sections["Compatible extensions"]
    contract.rpcs.extend(_rpc_from_row(cells) for cells in _table_rows(extensions))
    for line in _logical_lines(extensions):
        bullet = _BULLET.match(line)
        if bullet is None:
            continue
        if bullet["qualifier"].strip() == "enum":
            values = {k: int(v) for k, v in _ENUM_VALUE.findall(bullet["body"])}
            contract.enums.setdefault(bullet["name"], {}).update(values)
            continue
        contract.messages.append((bullet["name"], _parse_fields(bullet["body"])))
    return contract


@pytest.fixture(scope="module")
def contract() -> Contract:
    if not CONTRACT.is_file():
        pytest.skip(f"contract document not found at {CONTRACT} (it lives in the shared/ checkout)")
    return parse_contract(CONTRACT.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------
# The generated code, as a FileDescriptorProto
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fdp() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    experiment_service_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto


def _messages(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    return {m.name: m for m in fdp.message_type}


def _type_name(fd: descriptor_pb2.FieldDescriptorProto) -> str:
    # No package, so a top-level type is ".Name".
    return fd.type_name.removeprefix(".")


def _map_entry(msg: descriptor_pb2.DescriptorProto,
               fd: descriptor_pb2.FieldDescriptorProto) -> descriptor_pb2.DescriptorProto | None:
    for nested in msg.nested_type:
        if fd.type_name == f".{msg.name}.{nested.name}" and nested.options.map_entry:
            return nested
    return None


def _check_type(where: str, fd: descriptor_pb2.FieldDescriptorProto, expected: str,
                fdp: descriptor_pb2.FileDescriptorProto) -> None:
    if expected in SCALAR_TYPES:
        assert fd.type == SCALAR_TYPES[expected], f"{where}: expected {expected}, got type {fd.type}"
        return
    enums = {e.name for e in fdp.enum_type}
    wanted_kind = FDP.TYPE_ENUM if expected in enums else FDP.TYPE_MESSAGE
    assert fd.type == wanted_kind, f"{where}: expected {expected}, got type {fd.type}"
    assert _type_name(fd) == expected, f"{where}: expected {expected}, got {_type_name(fd)}"


def _check_field(msg_name: str, spec: FieldSpec, msg: descriptor_pb2.DescriptorProto,
                 fdp: descriptor_pb2.FileDescriptorProto) -> None:
    where = f"{msg_name}.{spec.name}"
    by_name = {f.name: f for f in msg.field}
    assert spec.name in by_name, f"{where}: field missing"
    fd = by_name[spec.name]
    assert fd.number == spec.number, f"{where}: number {fd.number}, contract says {spec.number}"

    if spec.type is None:  # "of your design": any message type will do
        assert fd.type == FDP.TYPE_MESSAGE, f"{where}: must be a message field"
        return

    if spec.label == "map":
        assert fd.label == FDP.LABEL_REPEATED, f"{where}: a map must be repeated entries"
        entry = _map_entry(msg, fd)
        assert entry is not None, f"{where}: must be a map"
        key, value = (f for f in sorted(entry.field, key=lambda f: f.number))
        assert spec.key_type is not None
        _check_type(f"{where} (key)", key, spec.key_type, fdp)
        _check_type(f"{where} (value)", value, spec.type, fdp)
        return

    _check_type(where, fd, spec.type, fdp)
    assert _map_entry(msg, fd) is None, f"{where}: must not be a map"
    repeated = fd.label == FDP.LABEL_REPEATED
    assert repeated == (spec.label == "repeated"), f"{where}: repeated={repeated}, contract: {spec.label!r}"
    assert fd.proto3_optional == (spec.label == "optional"), (
        f"{where}: explicit presence={fd.proto3_optional}, contract: {spec.label!r}"
    )

    oneof = None
    if fd.HasField("oneof_index") and not fd.proto3_optional:
        oneof = msg.oneof_decl[fd.oneof_index].name
    assert oneof == spec.oneof, f"{where}: oneof {oneof!r}, contract says {spec.oneof!r}"


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def test_parser_reads_the_whole_contract(contract: Contract) -> None:
    # Guards against a format change in the document turning every check below into a no-op.
    names = {name for name, _ in contract.messages}
    assert len(names) >= 70
    assert {"DataRecord", "TaskField", "PlotNoteOperation", "StepSamplesResponse"} <= names
    assert set(contract.enums) == {
        "WeightOperationType", "ZerofyPredicate", "AgentIntentType", "SampleEditType", "AgentProviderType",
    }
    assert len(contract.rpcs) == 13 + 14
    assert sum(len(fields) for _, fields in contract.messages) >= 300


def test_file_has_no_package(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    assert fdp.package == ""
    assert fdp.syntax == "proto3"
    assert [s.name for s in fdp.service] == ["ExperimentService"]


def test_every_message_and_field(contract: Contract, fdp: descriptor_pb2.FileDescriptorProto) -> None:
    messages = _messages(fdp)
    for name, fields in contract.messages:
        assert name in messages, f"message {name} missing"
        for spec in fields:
            _check_field(name, spec, messages[name], fdp)


def test_no_field_or_message_outside_the_contract(
    contract: Contract, fdp: descriptor_pb2.FileDescriptorProto
) -> None:
    documented: dict[str, set[tuple[str, int]]] = {}
    for name, fields in contract.messages:
        documented.setdefault(name, set()).update((f.name, f.number) for f in fields)
    for msg in fdp.message_type:
        if msg.name in OUR_DESIGN_MESSAGES:
            continue
        assert msg.name in documented, f"message {msg.name} is not in the contract"
        actual = {(f.name, f.number) for f in msg.field}
        extra = actual - documented[msg.name]
        assert not extra, f"{msg.name}: fields outside the contract {extra}"


def test_categorical_tags_is_a_repeated_name_and_categories(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    # Our design for the contract's open slot: one entry per tag column.
    response = _messages(fdp)["DataQueryResponse"]
    tags = next(f for f in response.field if f.name == "categorical_tags")
    assert (tags.number, tags.label, _type_name(tags)) == (9, FDP.LABEL_REPEATED, "CategoricalTag")
    tag = _messages(fdp)["CategoricalTag"]
    assert [(f.name, f.number, f.type, f.label) for f in tag.field] == [
        ("name", 1, FDP.TYPE_STRING, FDP.LABEL_OPTIONAL),
        ("categories", 2, FDP.TYPE_STRING, FDP.LABEL_REPEATED),
    ]


def test_every_enum_value(contract: Contract, fdp: descriptor_pb2.FileDescriptorProto) -> None:
    enums = {e.name: {v.name: v.number for v in e.value} for e in fdp.enum_type}
    assert set(enums) == set(contract.enums)
    for name, values in contract.enums.items():
        for value_name, number in values.items():
            assert enums[name].get(value_name) == number, f"{name}.{value_name} must be {number}"
        extra = set(enums[name]) - set(values) - OUR_DESIGN_ENUM_VALUES.get(name, set())
        assert not extra, f"{name}: values outside the contract {extra}"


def test_ollama_provider_has_a_new_number(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    provider = next(e for e in fdp.enum_type if e.name == "AgentProviderType")
    numbers = {v.name: v.number for v in provider.value}
    assert numbers["PROVIDER_OLLAMA"] == 2
    assert len(set(numbers.values())) == len(numbers)


def test_every_rpc(contract: Contract, fdp: descriptor_pb2.FileDescriptorProto) -> None:
    methods = {m.name: m for m in fdp.service[0].method}
    expected: dict[str, RpcSpec] = {}
    for rpc in contract.rpcs:
        # GetLatestLoggerData is in both tables; the two rows must agree.
        assert expected.setdefault(rpc.name, rpc) == rpc, f"{rpc.name}: the contract's tables disagree"
    assert set(methods) == set(expected)
    for name, rpc in expected.items():
        method = methods[name]
        assert method.input_type.removeprefix(".") == rpc.request, f"{name}: request type"
        assert method.output_type.removeprefix(".") == rpc.response, f"{name}: response type"
        assert method.server_streaming == rpc.server_streaming, f"{name}: server streaming"
        assert not method.client_streaming, f"{name}: the Studio never streams requests"


def test_rpc_paths_have_no_package() -> None:
    service = experiment_service_pb2.DESCRIPTOR.services_by_name["ExperimentService"]
    assert service.full_name == "ExperimentService"
    grpc_module = (GENERATED_DIR / "experiment_service_pb2_grpc.py").read_text(encoding="utf-8")
    assert "'/ExperimentService/GetDataSamples'" in grpc_module


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is needed to regenerate")
    protos = sorted(PROTO_DIR.glob("*.proto"))
    assert protos, f"no .proto files under {PROTO_DIR}"
    # Same invocation as `./dev protos`, into a scratch tree.
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iweightslabd/proto=protos",
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         *(str(p.relative_to(REPO)) for p in protos)],
        cwd=REPO, check=True, capture_output=True, timeout=60,
    )
    fresh_dir = tmp_path / "weightslabd" / "proto"
    fresh = sorted(p.name for p in fresh_dir.iterdir())
    committed = sorted(p.name for p in GENERATED_DIR.glob("*_pb2*.py*"))
    assert committed == fresh, "generated modules and protos/ disagree: run ./dev protos"
    for name in fresh:
        assert (fresh_dir / name).read_bytes() == (GENERATED_DIR / name).read_bytes(), (
            f"{name} is stale: run ./dev protos"
        )
