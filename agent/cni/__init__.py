"""mcast-cni: the CNI plugin that attaches pods to br-int through the node agent.

``plugin`` holds the commands and the console entry point (``mcast-cni``), ``spec`` the CNI
data formats, ``addressing`` our interface's name and addresses (IPAM or the primary /32),
``podnet`` the netlink/sysctl/ethtool work. A short-lived process per pod: of the agent it may
import ``agent.api.client``/``agent.api.types``, ``agent.interfacestore`` and the stdlib-only
``agent.podnetwork`` only (import-linter), so it starts without loading the agent.
"""
