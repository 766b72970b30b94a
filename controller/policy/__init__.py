"""Multicast policy in the controller: ``MulticastPolicy`` / ``ClusterMulticastPolicy`` objects
validated (``validate``, label selectors in ``selectors``), split into rules and shared groups
and spanned to nodes incrementally (``compute``), the per-node views and agents' rule stats
shared with the stream (``views``), the watch wiring (``sync``) and the status writer
(``status``). Imports ``wire`` and, for the wiring and the writer, ``controller.watch`` and the
official ``kubernetes`` client; never ``agent`` or ``tools``.
"""
