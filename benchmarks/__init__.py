"""Benchmarks of the token vending service (``make bench`` / ``python -m benchmarks``).

Importing this package puts the shared layer (``layers/token_vending``) and the repository root on
``sys.path``, as the Lambda runtime (``/opt/python``) and ``local/lambda_service.py`` (for its
workers) do, so ``token_vending``, ``local`` and ``tests.support`` import from any module here.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LAYER_DIR = REPO_ROOT / "layers" / "token_vending"
PYNG_APP = REPO_ROOT / "functions" / "provider" / "app.py"
"""Every provider's function; the benchmarks load it as Pyng's (CONNECTION_NAME=pyng)."""

for _entry in (str(REPO_ROOT), str(LAYER_DIR)):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)
