"""The last policy view the controller sent, kept in a file on the node.

An agent restarted while the controller is away would otherwise start with no view, and its
first bundle would delete the policy flows of its previous run: every pod unguarded until the
controller came back. With the view saved (as Antrea keeps its policies in files), the restarted
agent enforces it from its first bundle; the controller's full update replaces it on reconnect.

The file holds a full update as the stream carries it (``wire.policy``), written atomically
(temporary file + rename) after every change. It lives in the agent's run directory, which a
node reboot empties: pods and flows are gone then too. May import ``wire`` only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from wire.nodes import WireError
from wire.policy import PolicyView, full_update, update_from_json, update_to_json

log = logging.getLogger(__name__)


def save(path: Path, view: PolicyView) -> None:
    """Write ``view`` to ``path`` (atomically); a failure is logged, never raised: enforcing
    what the controller sent matters more than remembering it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(update_to_json(full_update(view))))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot save the policy view to %s: %s", path, e)
        tmp.unlink(missing_ok=True)


def load(path: Path) -> PolicyView | None:
    """The view saved at ``path``; None when there is none or it cannot be read (logged)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("cannot read the saved policy view %s: %s", path, e)
        return None
    try:
        view = PolicyView().apply(update_from_json(json.loads(text)))
    except (ValueError, WireError) as e:
        log.warning("ignoring the saved policy view %s: %s", path, e)
        return None
    log.info("enforcing the saved policy view (%d rules) until the controller sends its own",
             len(view.rules))
    return view
