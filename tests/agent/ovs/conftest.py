"""Test set-up below tests/agent/ovs: the pipeline tests' sample states, and hypothesis's files.

The fast encoder's tests (``test_fastwire*.py``) hold its bytes against os-ken's for every
golden sample state, which ``tests/pipeline/mcast_samples.py`` builds: that directory goes on
``sys.path`` here (pytest only puts it there when it collects the pipeline tests too).

Their property test keeps no example database (``database=None``, a fixed seed); hypothesis's
storage goes under the system's temporary directory as in ``tests/agent/multicast/conftest.py``,
unless HYPOTHESIS_STORAGE_DIRECTORY says where.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

PIPELINE_TESTS = Path(__file__).resolve().parents[2] / "pipeline"
if str(PIPELINE_TESTS) not in sys.path:
    sys.path.append(str(PIPELINE_TESTS))

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "kube-mcast-hypothesis")
