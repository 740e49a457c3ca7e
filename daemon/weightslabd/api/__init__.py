"""api: what clients call.

Owns the Studio's gRPC servicer and the server around it, the grid, queries, plots and histograms,
the gRPC-Web endpoint and its CORS policy, and the CLI's command set (served over gRPC and lines).
Imports every layer below it: store, ipc, security, ops, config.
"""
