"""ExperimentCommand operations that weightslabd has not built yet say so: no success for what nothing did."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, Trainer, history, wait_for

UNBUILT = {
    "save_checkpoint_operation": pb.TrainerCommand(save_checkpoint_operation=pb.SaveCheckpointOperation()),
    "load_checkpoint_operation": pb.TrainerCommand(load_checkpoint_operation=pb.LoadCheckpointOperation(
        checkpoint_id=3)),
    "restart_operation": pb.TrainerCommand(restart_operation=pb.RestartInstanceOperation()),
    "plot_note_operation": pb.TrainerCommand(plot_note_operation=pb.PlotNoteOperation(note="look")),
    "get_data_records": pb.TrainerCommand(get_data_records="train"),
    "get_single_layer_info_id": pb.TrainerCommand(get_single_layer_info_id=0),
    "get_interactive_layers": pb.TrainerCommand(get_interactive_layers=True),
}


@pytest.mark.timeout(60)
def test_unbuilt_operations_answer_failure_and_change_nothing(daemon: Daemon, env: dict[str, str],
                                                               tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
        for name, command in UNBUILT.items():
            reply = stub.ExperimentCommand(command, timeout=10)
            assert not reply.success, name
            assert reply.message == f"{name}: not built in weightslabd yet; nothing was done"
        hp = stub.ExperimentCommand(pb.TrainerCommand(get_hyper_parameters=True), timeout=10)
        assert hp.success and hp.hyper_parameters_descs  # reads that are built still answer
        assert trainer.proc.poll() is None
    finally:
        trainer.kill()
