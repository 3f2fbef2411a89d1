"""ionn_net: incremental offloading of neural-network inference to edge servers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
