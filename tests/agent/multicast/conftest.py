"""Test set-up shared below tests/agent/multicast: the fuzz tests' helpers and hypothesis's files.

pytest puts the directory of a conftest that is not in a package on ``sys.path``, so the tests
of ``igmp/`` import ``igmpfuzz`` (the IGMP frame strategies) from here as ``test_core_fuzz.py``
does: one set of strategies for the parser's and the core's fuzz tests.

The fuzz tests keep no example database (``database=None``, fixed seeds), but hypothesis still
caches what it learns of the source in its storage directory, by default ``.hypothesis/`` in the
working tree. It goes under the system's temporary directory instead, unless
HYPOTHESIS_STORAGE_DIRECTORY says where (hypothesis reads that when its pytest plugin loads,
before this file: hence the explicit call).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "kube-mcast-hypothesis")
