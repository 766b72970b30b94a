"""`python -m tools.kubeapi`: see `tools.kubeapi.server`."""

from tools.kubeapi.server import main

raise SystemExit(main())
