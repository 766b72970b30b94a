"""The single-node suite again, with pods attached the Multus way.

Every pod gets the primary network on eth0, then our plugin alone as the secondary network of
the ``kube-mcast`` NetworkAttachmentDefinition, on ``net1`` (``mclab up --attach multus``).
"""

from __future__ import annotations

from test_single_node import *  # noqa: F403 - the same tests, collected again here
from test_single_node import LAB_OPTIONS as _CHAINED

LAB_OPTIONS = {**_CHAINED, "attach": "multus"}
