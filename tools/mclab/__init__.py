"""mclab: build OVS nodes and pods in network namespaces for lab runs and tests."""
