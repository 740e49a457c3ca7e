"""docs/operations.md lists exactly the RPCs the servicer implements: no more, no fewer."""

from __future__ import annotations

import re
from pathlib import Path

from weightslabd.api.servicer import ExperimentServicer
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc

DOCS = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


def test_the_documented_rpcs_are_the_implemented_ones() -> None:
    rpcs = {name for name in vars(pb_grpc.ExperimentServiceServicer) if name[0].isupper()}
    implemented = {name for name in rpcs if name in vars(ExperimentServicer)}
    section = DOCS.read_text().split("## Status of the parts", 1)[1].split("\n## ", 1)[0]
    built = section.split("Every other RPC", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Za-z]+)`", built)) & rpcs
    assert documented == implemented
