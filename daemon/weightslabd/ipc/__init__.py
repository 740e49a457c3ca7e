"""ipc: trainers in, commands out.

Owns the ZeroMQ control socket (hello, heartbeats, commands, acks, dead-trainer detection) and the
threads that drain each trainer's shared-memory ring into the store. Imports store and config.
"""
