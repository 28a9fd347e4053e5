"""Run the local Sora server: ``python -m sora_sdk.testing --port 0 [--host H] [--secret S] [--tls]``.

Prints ``signaling_url=...`` and ``api_url=...`` lines, then serves until
SIGINT or SIGTERM.  With ``--tls`` the URLs are wss/https and the test CA's PEM
is written to ``--ca-cert-out`` (when given) and announced as ``ca_cert=PATH``.
The last line, ``viewer_url=...``, is the browser viewer page (see viewer.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .server import LocalSora


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sora_sdk.testing",
        description="Local Sora-compatible server (signaling, REST API, browser viewer) on loopback. On start it "
                    "prints its URLs, one per line: signaling_url=ws://HOST:PORT/signaling, api_url=..., and "
                    "viewer_url=... (a page that watches a channel); then it serves until Ctrl-C or SIGTERM.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0,
                        help="TCP port for all of it (default 0: a free port is picked; the URLs printed at "
                             "start name it)")
    parser.add_argument("--secret", default=None, help="require HS256 JWTs signed with this secret")
    parser.add_argument("--signaling-key", default=None, help="require metadata.signaling_key to equal this")
    parser.add_argument("--redirect-to", default=None, help="answer connects with a redirect to this URL")
    parser.add_argument("--ping-interval", type=float, default=None, help="seconds between pings (default off)")
    parser.add_argument("--video-codec-type", default="VP9", help="default video codec (default VP9)")
    parser.add_argument("--ice-address", default=None, help="gather ICE candidates on this address")
    parser.add_argument("--tls", action="store_true",
                        help="serve wss/https with a throw-away test CA (made with openssl)")
    parser.add_argument("--require-client-cert", action="store_true",
                        help="with --tls: require a client certificate signed by the test CA")
    parser.add_argument("--ca-cert-out", default=None, help="with --tls: write the test CA's PEM here")
    parser.add_argument("--client-cert-out", default=None,
                        help="with --require-client-cert: write the client certificate PEM here")
    parser.add_argument("--client-key-out", default=None,
                        help="with --require-client-cert: write the client key PEM here (mode 0600)")
    parser.add_argument("--sora-js-sdk", default=None, metavar="PATH",
                        help="sora-js-sdk's dist/sora.js for the viewer page (default: $SORA_JS_SDK, "
                             "else vendor/npm from `make web`)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.require_client_cert and not args.tls:
        parser.error("--require-client-cert needs --tls")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sora = LocalSora(host=args.host, port=args.port, secret=args.secret, signaling_key=args.signaling_key,
                     redirect_to=args.redirect_to, ping_interval=args.ping_interval,
                     video_codec_type=args.video_codec_type, ice_address=args.ice_address,
                     tls=args.tls, require_client_cert=args.require_client_cert,
                     sora_js_sdk=args.sora_js_sdk)
    try:
        sys.stdout.write("signaling_url=%s\n" % sora.signaling_url)
        sys.stdout.write("api_url=%s\n" % sora.api_url)
        for path, data, label in ((args.ca_cert_out, sora.ca_cert, "ca_cert"),
                                  (args.client_cert_out, sora.client_cert, "client_cert"),
                                  (args.client_key_out, sora.client_key, "client_key")):
            if path and data is not None:
                _write_private(path, data)
                sys.stdout.write("%s=%s\n" % (label, path))
        sys.stdout.write("viewer_url=%s?channel_id=sora\n" % sora.viewer_url)
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        sora.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
