"""The DTLS certificate: one ECDSA P-256 certificate per process (as libwebrtc makes), made by the shim in about a
millisecond instead of GStreamer's RSA-2048 key (csrc/src/dtlscert.c).

Checked: the a=fingerprint of the offers (our server) and answers (our client) is the sha-256 of that certificate,
the `certificate` stats entries show it (without its private key), every connection of a process shares it and
another process has its own, and libwebrtc (the official SDK, in a network namespace) completes DTLS with it.
How fast the first connect() is goes into benchmarks/compare.py, not here."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.conftest import Recorder, wait_until
# The official SDK's fixtures (a LocalSora on the namespace's veth address, official clients in the namespace).
from tests.test_official_interop import env, netns, official_python  # noqa: F401

pytestmark = pytest.mark.timeout(300)

# DER encodings of the OIDs (X.690): id-ecPublicKey 1.2.840.10045.2.1, prime256v1 1.2.840.10045.3.1.7,
# ecdsa-with-SHA256 1.2.840.10045.4.3.2 and rsaEncryption 1.2.840.113549.1.1.1.
OID_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")
OID_P256 = bytes.fromhex("06082a8648ce3d030107")
OID_ECDSA_SHA256 = bytes.fromhex("06082a8648ce3d040302")
OID_RSA = bytes.fromhex("06092a864886f70d010101")


def fingerprint_of(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def sdp_fingerprints(sdp: str) -> set:
    return {line.split(":", 1)[1].strip() for line in sdp.splitlines() if line.startswith("a=fingerprint:")}


def assert_ecdsa_p256(der: bytes) -> None:
    assert OID_EC_PUBLIC_KEY in der and OID_P256 in der, "not an ECDSA P-256 key"
    assert OID_ECDSA_SHA256 in der, "not signed with ecdsa-with-SHA256"
    assert OID_RSA not in der, "an RSA key"


def certificates(stats) -> dict:
    """{stats id: DER} of the `certificate` entries, after checking each one's fingerprint fields."""
    out = {}
    for entry in stats:
        if entry.get("type") != "certificate":
            continue
        der = base64.b64decode(entry["base64Certificate"])
        assert entry["fingerprintAlgorithm"] == "sha-256", entry
        assert entry["fingerprint"].upper() == fingerprint_of(der), entry
        out[entry["id"]] = der
    return out


def pem_der(pem: str) -> bytes:
    """The DER of a PEM that must hold one certificate and nothing else."""
    lines = pem.strip().splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE-----" and lines[-1] == "-----END CERTIFICATE-----", pem
    return base64.b64decode("".join(lines[1:-1]))


def server_certificates(raw) -> dict:
    """The server's raw engine stats of a connection (LocalSora.stats): {"local"/"remote": DER}."""
    (entry,) = [e for e in raw if e.get("gst-name") == "sora-dtls-transport"]
    assert entry["dtls-state"] == "connected", entry
    return {"local": pem_der(entry["certificate"]), "remote": pem_der(entry["remote-certificate"])}


def transport(stats) -> dict:
    (entry,) = [e for e in stats if e.get("type") == "transport"]
    return entry


def connect_recorded(sora, url: str, channel_id: str):
    """A sendrecv connection with a data channel (no media), connected, and its offer / answer SDP."""
    conn = sora.create_connection(signaling_urls=[url], role="sendrecv", channel_id=channel_id, audio=False,
                                  video=False, data_channel_signaling=True,
                                  data_channels=[{"label": "#dtls", "direction": "sendrecv"}])
    rec = Recorder(conn)
    sent = []
    conn.on_signaling_message = lambda kind, direction, message: sent.append((str(direction), message))
    conn.connect()
    assert rec.connected.wait(15), rec.events
    assert wait_until(lambda: ("#dtls",) in rec.of("data_channel"), 15), rec.events
    offer = json.loads(rec.of("set_offer")[0][0])["sdp"]
    answers = [json.loads(m)["sdp"] for d, m in sent if d.endswith("SENT") and json.loads(m).get("type") == "answer"]
    assert answers, sent
    return conn, rec, offer, answers[0]


def test_offer_answer_and_stats_show_one_ecdsa_p256_certificate(local_sora, sora):
    conn, rec, offer, answer = connect_recorded(sora, local_sora.signaling_url, "dtls-ours")
    stats = json.loads(conn.get_stats())
    assert transport(stats)["dtlsState"] == "connected"
    certs = certificates(stats)
    local = certs["certificate-local"]
    assert_ecdsa_p256(local)
    # Our answer names our certificate; the server (the same shim, in this process) offers the same one.
    assert sdp_fingerprints(answer) == {"sha-256 " + fingerprint_of(local)}
    assert sdp_fingerprints(offer) == {"sha-256 " + fingerprint_of(local)}
    assert certs["certificate-remote"] == local
    # The server side's own stats of this connection.
    server = server_certificates(local_sora.stats(rec.connection_id))
    assert server == {"local": local, "remote": local}
    # The certificate in the stats, never its private key (the engine holds both in one PEM).
    assert "PRIVATE" not in conn.get_stats() and "PRIVATE" not in json.dumps(local_sora.stats(rec.connection_id))

    # A second connection of this process: the same certificate.
    conn2, _, _, answer2 = connect_recorded(sora, local_sora.signaling_url, "dtls-ours-2")
    assert sdp_fingerprints(answer2) == sdp_fingerprints(answer)
    assert certificates(json.loads(conn2.get_stats()))["certificate-local"] == local
    conn2.disconnect()
    conn.disconnect()


PROBE = textwrap.dedent("""
    import json, sys, threading
    import sora_sdk
    sora = sora_sdk.Sora()
    conn = sora.create_connection(signaling_urls=[sys.argv[1]], role="recvonly", channel_id="dtls-other")
    done = threading.Event()
    conn.on_notify = lambda text: done.set() if json.loads(text).get("event_type") == "connection.created" else None
    conn.connect()
    assert done.wait(15)
    for entry in json.loads(conn.get_stats()):
        if entry.get("id") == "certificate-local":
            print(entry["base64Certificate"])
    conn.disconnect()
    sora.close()
""")


def test_each_process_makes_its_own_certificate(local_sora, sora):
    conn, _, _, answer = connect_recorded(sora, local_sora.signaling_url, "dtls-process")
    ours = certificates(json.loads(conn.get_stats()))["certificate-local"]
    env_vars = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH")] if p))
    out = subprocess.run([sys.executable, "-c", PROBE, local_sora.signaling_url], capture_output=True, text=True,
                         timeout=60, env=env_vars)
    assert out.returncode == 0, out.stderr[-2000:]
    other = base64.b64decode(out.stdout.strip().splitlines()[-1])
    assert_ecdsa_p256(other)
    assert other != ours
    conn.disconnect()


def test_libwebrtc_completes_dtls_with_our_certificate(env):  # noqa: F811
    """The official SDK verifies the offer's fingerprint against the certificate of the DTLS handshake."""
    channel = "dtls-official"
    client = env.official("sendrecv", channel, audio=False, video=False, data_channel_signaling=True,
                          data_channels=[{"label": "#dtls", "direction": "sendrecv"}])
    connection_id = client.connected()["connection_id"]
    client.wait("data_channel", lambda e: e["label"] == "#dtls", 15)
    offer = client.of("set_offer")[0]["offer"]["sdp"]
    stats = client.request("stats")["stats"]
    (official_transport,) = [e for e in stats if e.get("type") == "transport"]
    assert official_transport.get("dtlsState") == "connected", official_transport
    theirs = certificates(stats)
    remote = theirs[official_transport["remoteCertificateId"]]
    assert_ecdsa_p256(remote)
    assert sdp_fingerprints(offer) == {"sha-256 " + fingerprint_of(remote)}
    # And the server's view of the same connection.
    server = server_certificates(env.server.stats(connection_id))
    assert server == {"local": remote, "remote": theirs[official_transport["localCertificateId"]]}
    client.request("disconnect")
    env.finish(client)


def test_the_certificate_is_shared_by_threads_connecting_at_once(local_sora, sora):
    """Connections started together from several threads all get the process's one certificate."""
    results, errors = [], []

    def one(i):
        try:
            conn, _, _, answer = connect_recorded(sora, local_sora.signaling_url, "dtls-threads-%d" % i)
            results.append((sdp_fingerprints(answer), certificates(json.loads(conn.get_stats()))["certificate-local"]))
            conn.disconnect()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 3
    assert len({frozenset(f) for f, _ in results}) == 1 and len({der for _, der in results}) == 1
