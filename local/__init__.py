"""The service on loopback (``make local``) and what reads template.yaml for it and for the tests.

The local runner uses the layer's own code (the provider catalogue, among others) from this checkout, as
the deployed functions do from the layer.
"""

from __future__ import annotations

import sys
from pathlib import Path

_LAYER = str(Path(__file__).resolve().parents[1] / "layers" / "token_vending")
if _LAYER not in sys.path:
    sys.path.append(_LAYER)
