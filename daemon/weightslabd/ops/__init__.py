"""ops: keeping the daemon alive and observable.

Owns logging (structlog set-up, redaction), the watchdog over state locks and in-flight RPCs,
systemd's notify protocol, and the `weightslabd cli` client. Imports store, security and config.
"""
