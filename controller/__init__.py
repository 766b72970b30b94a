"""The cluster controller (one per cluster, leader-elected): not built yet, see README.md.

It will own watching Kubernetes, computing multicast policy per node and streaming it to
agents, and writing ``MulticastGroup`` objects. It may import ``wire`` (the types it exchanges
with agents) and ``pipeline``-free libraries; never ``agent`` (import-linter holds that).
"""
