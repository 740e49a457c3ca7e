"""Several nodes: a forwarding node's daemon sends its ranks' records to the job's home (docs/distributed.md)."""
