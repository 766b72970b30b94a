"""Getting desired flows onto the switch: the switch port, the reconciler, group ids.

Owns the ``Switch`` protocol and its plain values (``switch``), the reconciler that turns every
``(Feature, key) -> SwitchState`` into one bundle of ops (``reconciler``), and the group id
allocator (``groupids``). Knows nothing of multicast, pods or Kubernetes.
May import: ``pipeline`` and ``agent.metrics``. Below every feature (import-linter layers).
"""
