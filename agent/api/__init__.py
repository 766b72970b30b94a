"""The agent's local API: JSON over HTTP on a unix socket, for the CNI plugin, mcctl, the lab.

Owns the contract (``types``: routes, ``AgentApi``, JSON forms, ``ApiError``), the server, the
client, and the service that answers from the multicast core (``service``) — the one place
domain errors become HTTP statuses. Above the features: it may import ``agent.multicast``,
``agent.flowsync``, ``agent.interfacestore``, ``pipeline`` and ``wire``; nothing below imports
it. ``types`` and ``client`` use the standard library only (the CNI plugin imports them).
"""
