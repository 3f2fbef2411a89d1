"""``python -m ionn_net.bench`` runs ``ionn-bench``."""

from __future__ import annotations

import sys

from ionn_net.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
