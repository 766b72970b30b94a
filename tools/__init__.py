"""Developer and lab tooling for kube-mcast (not shipped in the agent image)."""
