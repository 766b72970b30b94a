"""The multi-node suite again (both modes), with pods attached the Multus way (``net1``)."""

from __future__ import annotations

from test_multi_node import TestEncap as _Encap
from test_multi_node import TestNoEncap as _NoEncap
from test_multi_node import mlab, pods  # noqa: F401 - the classes' fixtures


class TestEncapMultus(_Encap):
    ATTACH = "multus"


class TestNoEncapMultus(_NoEncap):
    ATTACH = "multus"
