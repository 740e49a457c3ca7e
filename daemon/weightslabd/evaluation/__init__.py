"""Evaluation passes, the daemon's side: requests, status, cancel, the timeout watch and the record of
passes that survives a restart (docs/evaluation-and-checkpoints.md). The pass itself runs in the trainer
(weightslab_shim.evaluation)."""
