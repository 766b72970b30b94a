"""Test set-up below tests/agent/ovs: the pipeline tests' sample states, hypothesis's files, and
the real-OVS fixtures (``db``, ``fatal``, ``switch``) the OpenFlow tests share.

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
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir
from oflab import attached_switch, ensure_br_int

from agent.ovs.ovsdb import Ovsdb
from agent.ovs.switch import OpenFlowSwitch
from pipeline import multicast as mc
from tools.mclab.ovsnode import OvsNode

MULTICAST = mc.pipeline()

PIPELINE_TESTS = Path(__file__).resolve().parents[2] / "pipeline"
if str(PIPELINE_TESTS) not in sys.path:
    sys.path.append(str(PIPELINE_TESTS))

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "kube-mcast-hypothesis")


@pytest.fixture
def db(ovs_node: OvsNode) -> Iterator[Ovsdb]:
    """An OVSDB connection to the test's own ovs-vswitchd."""
    with Ovsdb(ovs_node.db_sock) as conn:
        yield conn


@pytest.fixture
def fatal() -> Iterator[list[BaseException]]:
    """Errors the OpenFlow handlers raised; the test fails if there are any."""
    errors: list[BaseException] = []
    yield errors
    assert not errors, f"OpenFlow handler failed: {errors!r}"


@pytest.fixture
def switch(ovs_node: OvsNode, db: Ovsdb, fatal: list[BaseException]) -> Iterator[OpenFlowSwitch]:
    """Our OpenFlow switch adaptor attached to br-int, its tables named."""
    def configure() -> None:
        ensure_br_int(db)
        db.set_table_names("br-int", MULTICAST)
    with attached_switch(ovs_node, MULTICAST, fatal, configure=configure) as sw:
        yield sw
