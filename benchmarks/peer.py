"""The peer of ``upstream_calls_20_cold``: a plain per-process token cache.

This is what a client-side library such as requests-auth or Authlib's ``OAuth2Session`` gives: each
process fetches its own client-credentials token once and keeps it in memory until it expires. It
sends the same request as Pyng's profile (``token_vending.profile``): HTTP Basic client
authentication and a form body ``grant_type=client_credentials&scope=...`` (spaces as ``%20``).

Run as a child process (``python -m benchmarks.peer``) configured through the environment
(``PEER_TOKEN_URL``, ``PEER_CLIENT_ID``, ``PEER_CLIENT_SECRET``, ``PEER_SCOPE``). It prints
``ready``, waits for one line on stdin (the start signal shared by all peers), asks its client for
a token twice (the second time is answered from memory) and prints ``done``.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import quote, urlencode

import requests

ATTEMPTS = 3


class MemoisingTokenClient:
    """Fetch once, keep in memory until shortly before expiry: the whole per-process cache."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str,
                 margin_seconds: float = 60.0) -> None:
        self.token_url = token_url
        self.auth = (client_id, client_secret)
        self.scope = scope
        self.margin_seconds = margin_seconds
        self.session = requests.Session()
        self._token: str | None = None
        self._valid_until = 0.0

    def token(self) -> str:
        if self._token is not None and time.monotonic() < self._valid_until:
            return self._token
        body = urlencode({"grant_type": "client_credentials", "scope": self.scope}, quote_via=quote, safe=":")
        for attempt in range(ATTEMPTS):
            try:
                response = self.session.post(
                    self.token_url, data=body, auth=self.auth, timeout=(3.05, 10), allow_redirects=False,
                    headers={"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"})
                break
            except requests.ConnectionError:
                # A burst of connections can overflow the emulator's small listen backlog; the request
                # then never reached it, so trying again does not add to what it counts.
                if attempt == ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        response.raise_for_status()
        document = response.json()
        lifetime = float(document.get("expires_in", 300))
        self._token = str(document["access_token"])
        self._valid_until = time.monotonic() + max(lifetime - self.margin_seconds, lifetime / 2)
        return self._token


def main() -> int:
    client = MemoisingTokenClient(os.environ["PEER_TOKEN_URL"], os.environ["PEER_CLIENT_ID"],
                                  os.environ["PEER_CLIENT_SECRET"], os.environ["PEER_SCOPE"])
    print("ready", flush=True)
    if not sys.stdin.readline():
        return 1
    first = client.token()
    second = client.token()
    print("done" if first == second else "different", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
