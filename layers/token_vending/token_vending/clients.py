"""botocore settings for the functions' AWS clients.

Defaults (60 s timeouts, legacy retries) would let one slow DynamoDB call eat a caller's whole
budget; the cache is an optimisation with fallbacks, so it gets short timeouts and standard retries.
"""

from __future__ import annotations

from botocore.config import Config

DYNAMODB_CONFIG = Config(connect_timeout=2, read_timeout=2, retries={"mode": "standard", "max_attempts": 3})
SECRETS_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})
LAMBDA_CONFIG = Config(connect_timeout=2, read_timeout=27, retries={"mode": "standard", "max_attempts": 1})
"""Invoking a provider function may take its whole timeout (25 s); a read timeout must not re-invoke it,
and it ends before the token API function's own 28 s."""
