"""Pure IGMP handling: wire format (``packets``), membership state (``membership``), query
schedule (``querier``). No I/O; time is always passed in as seconds. Imports nothing of ours
outside this package (checked by mypy --strict and by the purity of its tests)."""
