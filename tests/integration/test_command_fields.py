"""Every field of TrainerCommand either does what it says or answers success=false naming itself and why.

The walk iterates the message's descriptor, so a field added to the proto later is sent too: unless
the servicer is taught to serve it, it must be refused, never answered success for nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, Trainer, history, wait_for
from .test_cli_server import grpc_cli

# A value for each field; a field not named here gets its type's plain value (a new field, say).
VALUES: dict[str, Any] = {
    "get_hyper_parameters": True, "get_interactive_layers": True, "get_data_records": "train",
    "get_single_layer_info_id": 0,
    "hyper_parameter_change": pb.HyperParameterCommand(hyper_parameters=pb.HyperParameters(learning_rate=0.05)),
    "deny_samples_operation": pb.DenySamplesOperation(sample_ids=[1, 2], accumulate=True),
    "remove_from_denylist_operation": pb.DenySamplesOperation(sample_ids=[2], accumulate=True),
    "deny_eval_samples_operation": pb.DenySamplesOperation(sample_ids=[1], accumulate=True),
    "remove_eval_from_denylist_operation": pb.DenySamplesOperation(sample_ids=[1], accumulate=True),
    "plot_note_operation": pb.PlotNoteOperation(metric_name="loss", model_age=3, note="spike here"),
    "save_checkpoint_operation": pb.SaveCheckpointOperation(save_architecture=True, save_optimizer=True),
    "restart_operation": pb.RestartInstanceOperation(),
}
# What each known field answers with the trainer of this test (one split, "train": no eval split).
EXPECTED = {
    "get_hyper_parameters": (True, ""), "hyper_parameter_change": (True, "applied at step"),
    "deny_samples_operation": (True, "applied at step"), "remove_from_denylist_operation": (True, "applied at step"),
    "deny_eval_samples_operation": (False, "'eval'"), "remove_eval_from_denylist_operation": (False, "'eval'"),
    "load_checkpoint_operation": (True, "restored"), "plot_note_operation": (True, "note saved"),
    "save_checkpoint_operation": (True, "written"),
    "restart_operation": (False, "sidecar"), "get_interactive_layers": (False, "never holds the model"),
    "get_single_layer_info_id": (False, "never holds the model"), "get_data_records": (False, "GetDataSamples"),
}


def request_setting(field: FieldDescriptor, checkpoint_step: int) -> Any:
    if field.name == "load_checkpoint_operation":
        return pb.TrainerCommand(load_checkpoint_operation=pb.LoadCheckpointOperation(checkpoint_id=checkpoint_step))
    value = VALUES.get(field.name)
    if value is None:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            value = field.message_type._concrete_class()
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif field.type == FieldDescriptor.TYPE_STRING:
            value = "x"
        else:
            value = 1
    return pb.TrainerCommand(**{field.name: value})


@pytest.mark.timeout(60)
def test_every_trainer_command_field_works_or_says_why_not(daemon: Daemon, env: dict[str, str],
                                                           tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
        saved = grpc_cli(daemon, "checkpoint save")
        assert saved["ok"] and "written" in saved["message"], saved
        listed = grpc_cli(daemon, "checkpoint list")["checkpoints"]
        assert len(listed) == 1 and Path(listed[0]["path"]).is_file()
        step = int(listed[0]["step"])
        for field in pb.TrainerCommand.DESCRIPTOR.fields:
            reply = stub.ExperimentCommand(request_setting(field, step), timeout=30)
            if field.name not in EXPECTED:  # a field nothing serves yet: refused, named, with a reason
                assert not reply.success and reply.message.startswith(f"{field.name}: not supported"), reply
                continue
            ok, says = EXPECTED[field.name]
            if not ok:
                assert len(reply.message) > len(field.name) + 20, reply.message
            assert (reply.success, says in reply.message) == (ok, True), (field.name, reply.message)
        assert trainer.proc.poll() is None
        back = grpc_cli(daemon, f"checkpoint restore {listed[0]['id']}")
        assert back["ok"] and f"training continues from step {step}" in back["message"], back
        assert not grpc_cli(daemon, "checkpoint restore nothing-like-a-hash")["ok"]
        noted = [p for p in history(stub) if p.point_note]
        assert [(p.metric_name, p.model_age, p.point_note) for p in noted] == [("loss", 3, "spike here")]
        two = pb.TrainerCommand(get_interactive_layers=True, restart_operation=pb.RestartInstanceOperation())
        reply = stub.ExperimentCommand(two, timeout=10)
        assert not reply.success and "get_interactive_layers" in reply.message and "restart_operation" in reply.message
    finally:
        trainer.kill()
