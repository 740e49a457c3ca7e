"""store: runs on disk and in memory.

Owns each run's folder (manifest, `signals.log`, the edit journal, snapshots, predictions in HDF5), the
state rebuilt from it (sample table, signal curves, per-sample values, previews) and the run's state
lock. Imports config and the shim's wire formats only: nothing of ipc, security, ops or api.
"""
