"""weightslabd: the daemon that serves Weights Studio beside a running training."""

__version__ = "0.1.0"
