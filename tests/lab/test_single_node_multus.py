"""The single-node suite again, with pods attached the Multus way.

Every pod gets the primary network on eth0, then our plugin alone as the secondary network of
the ``kube-mcast`` NetworkAttachmentDefinition, on ``net1`` (``mclab up --attach multus``).
Membership ageing does not depend on how a pod is attached: it runs once, in the chained suite.
"""

from __future__ import annotations

import test_single_node
from test_single_node import *  # noqa: F403 - the same tests, collected again here
from test_single_node import LAB_OPTIONS as _CHAINED

LAB_OPTIONS = {**_CHAINED, "attach": "multus"}

del test_queries_refresh_members_and_silent_member_ages_out  # noqa: F821 - from the * import
assert hasattr(test_single_node, "test_queries_refresh_members_and_silent_member_ages_out")
