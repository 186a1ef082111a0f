"""Token vending: cached OAuth 2.0 client-credentials access tokens for the providers of a catalogue.

``__version__`` is the release's one version: the root pyproject.toml reads it, and the tests hold the
caller library's ``__version__``, the template's ``AWS::ServerlessRepo::Application`` ``SemanticVersion``
and CHANGELOG.md's latest entry to it (neither can be read from here when it is built or deployed).
"""

from __future__ import annotations

__version__ = "0.3.0"
