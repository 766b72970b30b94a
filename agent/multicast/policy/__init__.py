"""Multicast NetworkPolicy on the node: the view the controller streams, made into flows and
IGMP verdicts (``compiler``, pure), enforced and counted (``enforcer``)."""
