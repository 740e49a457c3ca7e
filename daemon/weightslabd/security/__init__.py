"""security: who may talk to the daemon, and the record of who did.

Owns certificates and the TLS front (a child process that terminates TLS and relays to gRPC), token
checks, the peer table that names a call's real client, and the audit log. Imports config only.
"""
