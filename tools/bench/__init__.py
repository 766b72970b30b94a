"""Benchmarks of kube-mcast's real parts (``python -m tools.bench``; see README.md here).

Importing the package quiets the deprecation notice that python-ovs's eventlet import prints,
so the summary on stdout stays readable.
"""

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
