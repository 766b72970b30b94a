"""The node agent (``mcast-agent``): one per node, owns br-int and what pods see of multicast.

Layers, top to bottom (import-linter holds them; a layer imports only those below it):

- ``main`` — wiring and the timer loop: the only module that knows every layer.
- ``api`` — the local API (types, server, client, service); domain errors become statuses here.
- features — ``multicast`` today; ``policy`` and ``egress`` join beside it. Each turns events
  into ``(Feature, key) -> SwitchState`` for the reconciler and packet-outs for the switch.
- ``flowsync`` — the switch port (``Switch`` protocol), reconciler, group ids.

Beside them: ``ovs`` (adaptors implementing the switch port; the only importers of os-ken,
ovsdbapp and python-ovs), ``packetin`` (packet-ins to the feature that punted them),
``interfacestore`` (attached pods), ``config``, ``metrics``, and ``cni`` (the CNI plugin, a
separate short-lived process that talks to the agent through ``api.client`` only).
"""
