"""The cluster controller (one leader among its replicas): see README.md.

It watches Nodes, Namespaces and Pods (``watch``), elects a leader on a Lease (``leader``),
keeps the node set and the agents' memberships (``hub``), writes ``MulticastGroup`` objects
(``groups``) and serves agents their node's view (``stream``); ``main`` wires them from
``controller.yaml`` (``config``). It may import ``wire`` (the types it exchanges with agents),
the official ``kubernetes`` client and other libraries; never ``agent`` or ``tools``
(import-linter holds that).
"""
