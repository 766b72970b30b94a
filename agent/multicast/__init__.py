"""The multicast feature of the agent: IGMP in, membership, replication, IGMP out.

Owns IGMP parsing and membership (``igmp/``, pure, time passed in), the desired switch state
per pod, node and group (``forwarding``, ``groups``), what the node announces and queries
(``announcer``), restoring members after a restart (``restore``), pod counters (``stats``,
``collector``), the log of oversized multicast the switch punts (``oversize``), the core
that orders all of it per event (``core``), and ``mcctl trace``'s walk of a datagram through
the switch's dump (``trace``, ``tracehops``).
May import: ``pipeline``, ``wire``, ``agent.flowsync``, ``agent.interfacestore``,
``agent.config``, ``agent.metrics``. Never ``agent.ovs`` (it sees the switch through the
``agent.flowsync.switch`` port) nor the local API above it.
"""
