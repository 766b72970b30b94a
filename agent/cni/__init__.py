"""mcast-cni: the CNI plugin that attaches pods to br-int through the node agent.

``plugin`` holds the commands and the console entry point (``mcast-cni``), ``spec`` the CNI
data formats, ``podnet`` the netlink/ethtool work. A short-lived process per pod: it may import
``agent.api.client``/``agent.api.types`` and ``agent.interfacestore`` only (import-linter),
so it starts without loading the agent.
"""
