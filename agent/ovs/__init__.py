"""Open vSwitch adaptors: the only code that imports os-ken, ovsdbapp or python-ovs.

Owns the OpenFlow 1.5 channel to br-int (``channel``, ``switch``, ``convert``: pipeline
descriptions to os-ken messages and back, ``fastwire``: the same bytes for bundled flow and
group mods without os-ken's serializer), OVSDB (``ovsdb``: bridges, ports, table names, the
round), pod ports in OVSDB (``podports``) and ovs-vswitchd's unixctl (``vswitchd``).
May import: ``pipeline``, ``agent.flowsync.switch`` (the port it implements), ``agent.metrics``,
``agent.interfacestore``. Never a feature, the API or the wiring (import-linter holds that).
"""
