"""Authentication of `connect` messages for the local Sora server.

Tokens are HS256 JSON Web Tokens checked with the standard library's hmac.
The claims the server understands:

* ``channel_id``  -- when present it must equal the connect's channel_id
* ``exp`` / ``nbf`` -- expiry / not-before (seconds since the epoch)
* overrides applied to the connection: ``audio``, ``video``, ``video_codec_type``,
  ``video_bit_rate``, ``simulcast``, ``simulcast_encodings`` (the offer's ``encodings`` for a
  simulcast sender: a list of objects with a ``rid``), ``connection_lifetime`` (seconds)

``encode_jwt`` is provided for tests and examples that need a token.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from typing import Any, Dict, Optional

# Keys a token (or an auth hook) may override on a connection.
OVERRIDE_KEYS = (
    "audio",
    "video",
    "video_codec_type",
    "video_bit_rate",
    "simulcast",
    "simulcast_encodings",
    "connection_lifetime",
)


class AuthError(Exception):
    """The connect message was rejected; `reason` is sent as the close reason."""

    def __init__(self, reason: str = "AUTHZ-FAILED", detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise AuthError("AUTHZ-FAILED", "token segment is not text")
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.urlsafe_b64decode(padded.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise AuthError("AUTHZ-FAILED", "bad base64url in token: %s" % exc)


def _sign(signing_input: bytes, secret) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def encode_jwt(claims: Dict[str, Any], secret) -> str:
    """An HS256 JWT carrying `claims` (a JSON object) signed with `secret`."""
    header = {"alg": "HS256", "typ": "JWT"}
    head = _b64url_encode(json.dumps(header, separators=(",", ":")).encode("utf-8"))
    body = _b64url_encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    signing_input = ("%s.%s" % (head, body)).encode("ascii")
    return "%s.%s" % (head + "." + body, _b64url_encode(_sign(signing_input, secret)))


def verify_jwt(token: str, secret, *, now: Optional[float] = None, leeway: float = 0.0) -> Dict[str, Any]:
    """Check `token` (HS256 only) and its time claims; return the claims or raise AuthError."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise AuthError("AUTHZ-FAILED", "token is not a compact JWS")
    head_b64, body_b64, sig_b64 = token.split(".")
    try:
        header = json.loads(_b64url_decode(head_b64).decode("utf-8"))
        claims = json.loads(_b64url_decode(body_b64).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AuthError("AUTHZ-FAILED", "token is not JSON: %s" % exc)
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise AuthError("AUTHZ-FAILED", "token algorithm must be HS256")
    if not isinstance(claims, dict):
        raise AuthError("AUTHZ-FAILED", "token claims must be an object")
    expected = _sign(("%s.%s" % (head_b64, body_b64)).encode("ascii"), secret)
    if not hmac.compare_digest(expected, _b64url_decode(sig_b64)):
        raise AuthError("AUTHZ-FAILED", "bad token signature")
    current = time.time() if now is None else now
    exp = claims.get("exp")
    if exp is not None:
        if not _is_number(exp):
            raise AuthError("AUTHZ-FAILED", "exp must be a number")
        if current >= exp + leeway:
            raise AuthError("AUTHZ-FAILED", "token expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if not _is_number(nbf):
            raise AuthError("AUTHZ-FAILED", "nbf must be a number")
        if current + leeway < nbf:
            raise AuthError("AUTHZ-FAILED", "token not yet valid")
    return claims


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def token_from_metadata(metadata) -> Optional[str]:
    """The token of a connect's `metadata`: `access_token`, else `signaling_key`, else the string itself."""
    if isinstance(metadata, str):
        return metadata
    if isinstance(metadata, dict):
        for key in ("access_token", "signaling_key"):
            value = metadata.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def check_overrides(overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Keep the known override keys, type-checked; raise AuthError for a bad value."""
    out: Dict[str, Any] = {}
    for key in OVERRIDE_KEYS:
        if key not in overrides:
            continue
        value = overrides[key]
        if key in ("audio", "video", "simulcast"):
            if not isinstance(value, bool):
                raise AuthError("AUTHZ-FAILED", "%s must be a boolean" % key)
        elif key == "video_codec_type":
            if not isinstance(value, str):
                raise AuthError("AUTHZ-FAILED", "video_codec_type must be a string")
            value = value.upper()
        elif key in ("video_bit_rate", "connection_lifetime"):
            if not _is_number(value) or value < 0:
                raise AuthError("AUTHZ-FAILED", "%s must be a non-negative number" % key)
        elif key == "simulcast_encodings":
            if not isinstance(value, list) or not 1 <= len(value) <= 8 or \
                    not all(isinstance(e, dict) and isinstance(e.get("rid"), str)
                            and re.fullmatch(r"[A-Za-z0-9_-]{1,32}", e["rid"]) for e in value):
                raise AuthError("AUTHZ-FAILED", "simulcast_encodings must be a list of 1..8 objects with a rid")
            value = [dict(e) for e in value]
        out[key] = value
    return out


def authenticate(connect: Dict[str, Any], *, secret=None, signaling_key: Optional[str] = None,
                 auth_hook=None, now: Optional[float] = None) -> Dict[str, Any]:
    """Run every configured check on a connect message.

    Returns ``{"overrides": {...}, "claims": {...} or None, "hook": {...} or None}``.
    Raises AuthError on rejection. The auth hook is called last with the connect
    message; it returns None (accept as is), a dict of overrides (optionally with
    an ``authz_metadata`` key), or raises to reject (an AuthError keeps its reason).
    """
    metadata = connect.get("metadata")
    overrides: Dict[str, Any] = {}
    claims = None
    if signaling_key is not None:
        given = metadata.get("signaling_key") if isinstance(metadata, dict) else None
        if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8"),
                                                                 signaling_key.encode("utf-8")):
            raise AuthError("AUTHZ-FAILED", "signaling_key mismatch")
    if secret is not None:
        token = token_from_metadata(metadata)
        if token is None:
            raise AuthError("AUTHZ-FAILED", "no access_token in metadata")
        claims = verify_jwt(token, secret, now=now)
        want = claims.get("channel_id")
        if want is not None and want != connect.get("channel_id"):
            raise AuthError("AUTHZ-FAILED", "channel_id does not match the token")
        overrides.update(check_overrides(claims))
    hook_result = None
    if auth_hook is not None:
        try:
            hook_result = auth_hook(connect)
        except AuthError:
            raise
        except Exception as exc:  # any exception from the hook rejects the connection
            raise AuthError("AUTHZ-FAILED", "auth hook rejected: %s" % exc)
        if hook_result is not None:
            if not isinstance(hook_result, dict):
                raise AuthError("AUTHZ-FAILED", "auth hook must return a dict or None")
            if hook_result.get("allowed") is False:
                reason = hook_result.get("reason")
                raise AuthError(reason if isinstance(reason, str) and reason else "AUTHZ-FAILED",
                                "auth hook returned allowed=false")
            overrides.update(check_overrides(hook_result))
    return {"overrides": overrides, "claims": claims, "hook": hook_result}
