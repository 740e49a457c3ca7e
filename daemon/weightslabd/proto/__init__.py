"""Generated protobuf and gRPC modules for protos/*.proto (regenerate with `./dev protos`)."""
