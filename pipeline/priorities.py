"""Named flow priorities. Builders use these names, never bare numbers."""

MISS = 0
"""Table-miss flows (continue to the next table)."""
DEFAULT_EXTERNAL = 50
"""Pod multicast to a group with no member anywhere still goes to external receivers."""
NORMAL = 200
"""Ordinary per-port / per-group flows."""
SOURCE_SPECIFIC = 210
"""Per (source, group) route flows for IGMPv3 INCLUDE receivers; beats the (*, G) flow."""
SUPPRESS = 190
"""Duplicate-suppression drops in the output table (below the positive output flows)."""
SPOOF_DROP = 150
"""Multicast from a pod port without the pod's own MAC and IP (below its fork flow)."""
PORT_DROP = 100
"""Anything else a pod port sends: not IPv4 multicast, nothing on br-int serves it."""
PUNT = 220
"""IGMP punts to the agent: above every data flow of the same port."""
NODE_SNAT_DROP = 230
"""Drop multicast that another cluster node SNATed onto the underlay (it came by tunnel)."""
OVERSIZE = 240
"""Multicast over its size limit (the OVERSIZE bit): counted, punted, never forwarded; above
every metric, route and output flow of its table."""
POLICY_RULE_LOWEST = 1000
"""The lowest priority a multicast NetworkPolicy rule may have in the rule tables (above every
fixed flow there: the table miss)."""
POLICY_RULE_HIGHEST = 60000
"""The highest priority of a policy rule: below SELF_LOOP, which must drop a pod's own copy
whatever the pod's ingress rules say."""
SELF_LOOP = 0xFFF0
"""Drop a pod's own copy before its ingress metric: a sender that is a member gets no copy."""
