"""Node agent: talks to OVS (OpenFlow, OVSDB), to pods' IGMP and to the controller."""
