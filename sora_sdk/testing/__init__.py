"""A local Sora-compatible server for tests and offline use.

    from sora_sdk.testing import LocalSora

    with LocalSora() as sora:
        print(sora.signaling_url)   # ws://127.0.0.1:<port>/signaling
        ...

Also runnable: ``python -m sora_sdk.testing --port 0``.
"""
from __future__ import annotations

from .auth import AuthError, encode_jwt, verify_jwt
from .server import LocalSora

__all__ = ["LocalSora", "AuthError", "encode_jwt", "verify_jwt"]
