"""Wire types the agent and the cluster side (lab, controller) exchange.

Owns the plain values and their JSON forms that cross a process boundary between the agent and
whoever tells it about the cluster, and (``configfile``) the strict-config rules agent.yaml and
controller.yaml share. Imports nothing of ours (checked by import-linter), so both
``agent`` and ``controller`` may depend on it without depending on each other.
"""
