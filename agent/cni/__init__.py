"""mcast-cni: the CNI plugin that attaches pods to br-int through the node agent.

``plugin`` holds the commands and the console entry point (``mcast-cni``), ``spec`` the CNI
data formats, ``podnet`` the netlink/ethtool work.
"""
