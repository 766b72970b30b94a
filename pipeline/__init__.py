"""The OpenFlow pipeline as data: tables, registers, cookies, flow builders, renderer, fake table.

Pure: no os-ken, no I/O, no module-level mutable state.
"""
