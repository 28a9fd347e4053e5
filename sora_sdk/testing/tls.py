"""Throw-away TLS material for the local Sora server, made with the ``openssl`` tool.

:func:`generate` creates, in a private temporary directory, a test CA and a
server certificate signed by it (subjectAltName: the given IP addresses and
DNS names), plus optionally a client certificate signed by the same CA.  The
PEM bytes are read back and the directory is deleted before returning; the
server's :class:`ssl.SSLContext` is built from a second short-lived private
directory (``load_cert_chain`` only reads files).
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
from typing import Iterable, NamedTuple, Optional

__all__ = ["TlsMaterial", "generate", "server_context"]

_DAYS = "2"
_KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class TlsMaterial(NamedTuple):
    ca_cert: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: Optional[bytes]
    client_key: Optional[bytes]


def _openssl(directory: str, *args: str) -> None:
    try:
        subprocess.run(["openssl"] + list(args), cwd=directory, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True, timeout=60)
    except FileNotFoundError:
        raise RuntimeError("LocalSora(tls=True) needs the openssl command-line tool") from None
    except subprocess.CalledProcessError as error:
        raise RuntimeError("openssl %s failed: %s" % (args[0], error.stderr.decode("utf-8", "replace").strip()))


def _write(directory: str, name: str, text: str) -> None:
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _read(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name), "rb") as handle:
        return handle.read()


def _san(hostnames: Iterable[str]) -> str:
    entries = []
    for name in hostnames:
        name = name.strip("[]")
        try:
            ipaddress.ip_address(name)
            entry = "IP:%s" % name
        except ValueError:
            entry = "DNS:%s" % name
        if entry not in entries:
            entries.append(entry)
    return ",".join(entries)


def _issue(directory: str, name: str, subject: str, extensions: str) -> None:
    """``name``.key + ``name``.pem: a new key and a certificate signed by ca.key."""
    _openssl(directory, "req", "-new", *_KEY_ARGS, "-keyout", name + ".key", "-out", name + ".csr",
             "-subj", subject)
    _write(directory, name + ".ext", extensions)
    _openssl(directory, "x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-set_serial", "0x%s" % secrets.token_hex(16), "-days", _DAYS, "-sha256",
             "-extfile", name + ".ext", "-out", name + ".pem")


def generate(hostnames: Iterable[str] = ("127.0.0.1", "localhost"), *,
             client: bool = False) -> TlsMaterial:
    """A new CA, a server certificate for ``hostnames`` and (``client``) a client certificate."""
    directory = tempfile.mkdtemp(prefix="local-sora-tls-")  # mode 0700
    try:
        _openssl(directory, "req", "-x509", *_KEY_ARGS, "-keyout", "ca.key", "-out", "ca.pem",
                 "-days", _DAYS, "-sha256", "-subj", "/CN=LocalSora test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-addext", "subjectKeyIdentifier=hash")
        _issue(directory, "server", "/CN=LocalSora server",
               "basicConstraints=critical,CA:FALSE\n"
               "keyUsage=critical,digitalSignature,keyEncipherment\n"
               "extendedKeyUsage=serverAuth\n"
               "subjectKeyIdentifier=hash\n"
               "authorityKeyIdentifier=keyid\n"
               "subjectAltName=%s\n" % _san(hostnames))
        client_cert = client_key = None
        if client:
            _issue(directory, "client", "/CN=LocalSora client",
                   "basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n"
                   "subjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid\n")
            client_cert = _read(directory, "client.pem")
            client_key = _read(directory, "client.key")
        return TlsMaterial(_read(directory, "ca.pem"), _read(directory, "server.pem"),
                           _read(directory, "server.key"), client_cert, client_key)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def server_context(material: TlsMaterial, require_client_cert: bool = False) -> ssl.SSLContext:
    """A server-side context presenting the server certificate (and asking for a client one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    directory = tempfile.mkdtemp(prefix="local-sora-tls-")
    try:
        cert_path = os.path.join(directory, "cert.pem")
        key_path = os.path.join(directory, "key.pem")
        _write(directory, "cert.pem", material.server_cert.decode("ascii"))
        _write(directory, "key.pem", material.server_key.decode("ascii"))
        context.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if require_client_cert:
        context.load_verify_locations(cadata=material.ca_cert.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
