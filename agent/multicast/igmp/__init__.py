"""Pure IGMP handling: wire format (packets), membership state (membership), query schedule
(querier). No I/O here; time is always passed in as seconds."""
