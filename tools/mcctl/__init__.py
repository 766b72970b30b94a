"""mcctl: the operator's view of one node's agent (antctl-like)."""
