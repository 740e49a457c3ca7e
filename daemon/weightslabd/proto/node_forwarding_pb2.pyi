from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frames(_message.Message):
    __slots__ = ("node", "frames")
    NODE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    node: str
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, node: _Optional[str] = ..., frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("seq", "ring", "control", "record")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ring: str
    control: bytes
    record: Record
    def __init__(self, seq: _Optional[int] = ..., ring: _Optional[str] = ..., control: _Optional[bytes] = ..., record: _Optional[_Union[Record, _Mapping]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("type", "step", "position", "payload")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    type: int
    step: int
    position: int
    payload: bytes
    def __init__(self, type: _Optional[int] = ..., step: _Optional[int] = ..., position: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Taken(_message.Message):
    __slots__ = ("seq", "unknown")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    seq: int
    unknown: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., unknown: _Optional[_Iterable[str]] = ...) -> None: ...
