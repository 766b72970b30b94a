"""The multi-node suite again (both modes), with pods attached the Multus way (``net1``).

Tests of what does not depend on how a pod is attached (membership ageing, a node's scale of
groups, what leaves by the uplink) run once, in the chained suite: here they would repeat the same
code paths for ~2 min of the CI budget.
"""

from __future__ import annotations

from test_multi_node import TestEncap as _Encap
from test_multi_node import TestNoEncap as _NoEncap
from test_multi_node import mlab, pods  # noqa: F401 - the classes' fixtures

ATTACH_INDEPENDENT = ("test_many_groups_on_one_node", "test_killed_agent_ages_out",
                      "test_pod_traffic_leaves_by_the_uplink_only_while_outside_asks")


class TestEncapMultus(_Encap):
    ATTACH = "multus"


class TestNoEncapMultus(_NoEncap):
    ATTACH = "multus"


for _cls in (TestEncapMultus, TestNoEncapMultus):
    for _name in ATTACH_INDEPENDENT:
        if hasattr(_cls, _name):
            setattr(_cls, _name, None)  # pytest collects only callables
