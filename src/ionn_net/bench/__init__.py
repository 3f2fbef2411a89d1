"""``ionn-bench``: every upload strategy side by side on emulated links and devices.

Submodules: :mod:`.scenario` (TOML scenarios), :mod:`.models` (the model catalogue),
:mod:`.links` (link backends through :mod:`ionn_net.netem`), :mod:`.device` (device
emulation), :mod:`.worker` (the client process), :mod:`.serverproc` (the server
process), :mod:`.runner` (one scenario x model group of runs), :mod:`.results` (the
per-run JSON document and its metrics), :mod:`.predict` (the simulator's timeline
beside the measured one), :mod:`.report` (plots and the markdown summary),
:mod:`.cli` (the console script). Only :mod:`.worker` and :mod:`.serverproc` import
TensorFlow; the orchestrating process stays light.
"""

from __future__ import annotations
