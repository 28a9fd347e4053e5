"""The browser viewer that the local server serves: ``GET /viewer/?channel_id=...``.

The page (``static/viewer.html`` + ``static/viewer.js``, written for this
project) uses the official browser SDK, the npm package ``sora-js-sdk``, to
watch a channel (every remote stream in a ``<video>``) or to send a test
pattern and a tone. This project does not ship that bundle: ``make web`` runs
``npm install sora-js-sdk`` into ``vendor/npm`` (git-ignored) and the server
serves its ``dist/sora.js`` as ``/viewer/sora.js`` when the file is there; the
page says so when it is not.

Only the fixed names below are served; nothing else of the file system is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Tuple

STATIC = Path(__file__).resolve().parent / "static"
#: ``dist/sora.js`` as ``make web`` stages it in a source checkout.
VENDORED_BUNDLE = (Path(__file__).resolve().parents[2] / "vendor" / "npm" / "node_modules"
                   / "sora-js-sdk" / "dist" / "sora.js")
BUNDLE_ENV = "SORA_JS_SDK"

HTML = "text/html; charset=utf-8"
JS = "text/javascript; charset=utf-8"
TEXT = "text/plain; charset=utf-8"

_PAGES: Dict[str, Tuple[str, str]] = {
    "/viewer/": ("viewer.html", HTML),
    "/viewer/index.html": ("viewer.html", HTML),
    "/viewer/viewer.js": ("viewer.js", JS),
}

NO_BUNDLE = ("// sora-js-sdk is not installed on this server.\n"
             "// Run `make web` (npm install sora-js-sdk into vendor/npm) or set %s to its dist/sora.js.\n"
             % BUNDLE_ENV)


def find_bundle(explicit: Optional[str] = None) -> Optional[Path]:
    """The sora-js-sdk bundle to serve: `explicit`, else $SORA_JS_SDK, else the vendored one; None if absent."""
    for candidate in (explicit, os.environ.get(BUNDLE_ENV), str(VENDORED_BUNDLE)):
        if candidate:
            path = Path(candidate)
            return path if path.is_file() else None
    return None


def handles(method: str, path: str) -> bool:
    """Whether ``method path`` (query removed) is a viewer request (browsers also ask for /favicon.ico)."""
    return method in ("GET", "HEAD") and (path in ("/viewer", "/favicon.ico") or path.startswith("/viewer/"))


def serve(path: str, query: str, bundle: Optional[str] = None) -> Tuple[int, str, bytes, Dict[str, str]]:
    """(status, content type, body, extra headers) for a viewer request."""
    status, content_type, body, headers = _serve(path, query, bundle)
    return status, content_type, body, dict(headers, **{"Cache-Control": "no-store"})


def _serve(path: str, query: str, bundle: Optional[str]) -> Tuple[int, str, bytes, Dict[str, str]]:
    if path == "/viewer":  # relative links in the page need the slash
        return 301, TEXT, b"moved\n", {"Location": "/viewer/" + ("?" + query if query else "")}
    if path == "/favicon.ico":  # no icon, and no error in the browser's console either
        return 204, TEXT, b"", {}
    if path == "/viewer/sora.js":
        found = find_bundle(bundle)
        if found is None:
            return 404, JS, NO_BUNDLE.encode("utf-8"), {}
        return 200, JS, found.read_bytes(), {}
    entry = _PAGES.get(path)
    if entry is None:
        return 404, TEXT, b"not found\n", {}
    name, content_type = entry
    return 200, content_type, (STATIC / name).read_bytes(), {}
