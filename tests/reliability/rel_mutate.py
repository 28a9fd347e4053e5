"""A deterministic mutation fuzzer for Sora signaling input (seeded random.Random, no extra packages).

`Mutator.message()` returns the bytes of one adversarial server message made
from a seed corpus of real server messages: JSON-tree mutations (values
replaced by hostile ones, keys dropped/added, types swapped, deep nesting),
SDP mutations of any ``sdp`` string (lines dropped/duplicated/replaced,
numbers and tokens corrupted, hostile attribute lines inserted) and, for some,
byte-level damage of the serialised text. `Mutator.frame()` builds raw
WebSocket frames (valid and invalid headers, fragmentation, control frames,
close payloads) and `Mutator.http_head()` HTTP upgrade responses.
"""
from __future__ import annotations

import json
import random
import struct
from typing import Any, List, Optional

HOSTILE_STRINGS = [
    "", " ", "\x00", "\t", "\r\n", "\n", "\r", "²", "¹23", "9²", "٣", "١٢٣", "0x10", "-1", "0", "+1",
    "4294967296", "18446744073709551616", "-2147483649", "1e999", "NaN", "Infinity", "null", "true",
    "x" * 300, "🙂", "\u202e", "\ufeff", "\udc80", "%s%n", "{}", "[]", "\\", '"', "a=", "m=", ":", "::",
    "m=video", "m=audio 9 UDP/TLS/RTP/SAVPF", "a=rtpmap:", "a=ssrc:", "a=mid:", "a=msid:", "a=extmap:",
    "a=fmtp:", "a=rid:", "a=ssrc-group:FID", "a=sendonly", "a=inactive", "video", "audio", "application",
    "offer", "re-offer", "notify", "ws://127.0.0.1:1/signaling", "stun:127.0.0.1:1", "turn:u@127.0.0.1:1",
]
HOSTILE_NUMBERS = [0, -1, 1, 2, 7, 8, 9, 126, 127, 255, 65535, 65536, 2 ** 31 - 1, 2 ** 31, -2 ** 31 - 1,
                   2 ** 32 - 1, 2 ** 32, 2 ** 63, 2 ** 64, -2 ** 63, 10 ** 30, 1e308, -1e308, 1e-308, 0.5,
                   float("nan"), float("inf"), float("-inf"), -0.0, 1e200, 3.5]
KEYS = ["type", "sdp", "connection_id", "config", "iceServers", "urls", "username", "credential",
        "iceTransportPolicy", "data_channels", "label", "compress", "direction", "mid", "audio", "video",
        "encodings", "simulcast", "rid", "active", "scaleResolutionDownBy", "scaleResolutionDownTo", "maxWidth",
        "maxHeight", "maxBitrate", "maxFramerate", "scalabilityMode", "ssrc", "ignore_disconnect_websocket",
        "stats", "location", "event_type", "data", "metadata", "code", "reason", "client_id", "bundle_id",
        "session_id", "channel_connections", "spotlight", "multistream", "version", "redirect", "header"]
TYPES = ["offer", "re-offer", "update", "notify", "push", "ping", "pong", "switched", "redirect", "candidate",
         "answer", "re-answer", "close", "disconnect", "connect", "req-stats", "stats", "", "OFFER", "Offer ",
         "x" * 300]
SDP_LINES = [
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=video 0 UDP/TLS/RTP/SAVPF", "m=", "m=video", "m=video 9 UDP/TLS/RTP/SAVPF 96 ²", "m=video x y z 1 2 3",
    "a=rtpmap:96 VP8/90000", "a=rtpmap:96", "a=rtpmap:96 /", "a=rtpmap:96 H264/9²0000", "a=rtpmap:x VP8/90000",
    "a=rtpmap:4294967296 VP9/90000/2/3", "a=rtpmap:111 OPUS/48000/²", "a=fmtp:96 apt=97", "a=fmtp:96",
    "a=fmtp:99999999999999999999 x=1", "a=rtcp-fb:96 nack pli", "a=mid:", "a=mid:0", "a=mid:\x00",
    "a=msid:", "a=msid:stream track", "a=msid: ", "a=msid:a b c d", "a=rid:", "a=rid:r0 send", "a=rid: ",
    "a=simulcast:send r0;r1;r2", "a=extmap:", "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:²/sendonly urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "a=extmap:99999999999999999 x",
    "a=extmap:4/recvonly urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "a=ssrc:", "a=ssrc:¹ cname:x",
    "a=ssrc:4294967296 cname:x", "a=ssrc:1 msid:a b", "a=ssrc-group:FID", "a=ssrc-group:FID 1 2",
    "a=ssrc-group:FID ² 3", "a=ssrc-group:FID 1 2 3 4", "a=ssrc-group:SIM 1 2 3", "a=sendonly", "a=recvonly",
    "a=inactive", "a=sendrecv", "a=sendrecv:x", "a=setup:actpass", "a=setup:bogus", "a=ice-ufrag:",
    "a=ice-pwd:", "a=fingerprint:sha-256 00", "a=fingerprint:", "a=candidate:", "a=candidate:1 1 UDP x",
    "a=candidate:1 1 UDP 2015364095 127.0.0.1 1 typ host", "a=end-of-candidates", "a=group:BUNDLE",
    "a=group:BUNDLE 0 1 2 3 4 5", "a=rtcp-mux", "a=sctp-port:5000", "a=sctp-port:-1", "a=max-message-size:x",
    "c=IN IP4 0.0.0.0", "c=IN IP6 ::", "c=", "v=0", "v=1", "o=- 0 0 IN IP4 0.0.0.0", "s=-", "t=0 0", "",
    "a=", "a=:", "b=AS:-1", "x" * 200,
]


class Mutator:
    def __init__(self, seeds: List[str], seed: int) -> None:
        self.seeds = [s for s in seeds if s]
        self.rng = random.Random(seed)

    # ------------------------------------------------------------------ values
    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if r < 0.25:
            return self.rng.choice(HOSTILE_NUMBERS)
        if r < 0.5:
            return self.string()
        if r < 0.6:
            return self.rng.choice([None, True, False])
        if depth > 3 or r < 0.7:
            return self.rng.choice([[], {}, [None], {"": None}])
        if r < 0.85:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        return {self.key(): self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def string(self) -> str:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.choice(HOSTILE_STRINGS)
        if r < 0.8:
            return "".join(chr(self.rng.choice([self.rng.randint(0, 0x7f), self.rng.randint(0x80, 0x2fff),
                                                self.rng.randint(0xe000, 0x10ffff)]))
                           for _ in range(self.rng.randint(0, 24)))
        return self.rng.choice(HOSTILE_STRINGS) * self.rng.randint(2, 50)

    def key(self) -> str:
        return self.rng.choice(KEYS) if self.rng.random() < 0.85 else self.string()

    def nested(self) -> Any:
        depth = self.rng.choice([10, 50, 200])
        value: Any = self.value(3)
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"a": value}
        return value

    # ------------------------------------------------------------------ SDP
    def sdp(self, text: str) -> str:
        lines = text.replace("\r\n", "\n").split("\n")
        for _ in range(self.rng.randint(1, 6)):
            if not lines:
                lines.append(self.rng.choice(SDP_LINES))
                continue
            i = self.rng.randrange(len(lines))
            op = self.rng.random()
            if op < 0.2:
                del lines[i]
            elif op < 0.45:
                lines.insert(i, self.rng.choice(SDP_LINES))
            elif op < 0.55:
                lines.insert(i, lines[self.rng.randrange(len(lines))])
            elif op < 0.7:
                lines[i] = self._damage_line(lines[i])
            elif op < 0.8:
                lines[i] = lines[i][:self.rng.randrange(len(lines[i]) + 1)]
            elif op < 0.85:
                j = self.rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
            elif op < 0.9:
                lines[i] = lines[i] + self.string()
            elif op < 0.95:  # a whole section duplicated
                starts = [k for k, line in enumerate(lines) if line.startswith("m=")]
                if starts:
                    k = self.rng.choice(starts)
                    end = next((n for n in starts if n > k), len(lines))
                    lines.extend(lines[k:end])
            else:
                lines = lines[:self.rng.randrange(len(lines) + 1)]
        sep = self.rng.choice(["\r\n", "\r\n", "\n", "\r"])
        return sep.join(lines) + (sep if self.rng.random() < 0.9 else "")

    def _damage_line(self, line: str) -> str:
        tokens = line.replace(":", " : ").split(" ")
        if not tokens:
            return line
        i = self.rng.randrange(len(tokens))
        r = self.rng.random()
        if r < 0.4:
            tokens[i] = str(self.rng.choice(HOSTILE_NUMBERS))
        elif r < 0.7:
            tokens[i] = self.rng.choice(HOSTILE_STRINGS)
        elif r < 0.85:
            del tokens[i]
        else:
            tokens.insert(i, self.string())
        return " ".join(tokens).replace(" : ", ":")

    # ------------------------------------------------------------------ JSON trees
    def _nodes(self, tree: Any, path=()):
        yield path, tree
        if isinstance(tree, dict):
            for key, value in tree.items():
                yield from self._nodes(value, path + (key,))
        elif isinstance(tree, list):
            for index, value in enumerate(tree):
                yield from self._nodes(value, path + (index,))

    def mutate_tree(self, tree: Any) -> Any:
        for _ in range(self.rng.randint(1, 4)):
            nodes = list(self._nodes(tree))
            path, node = self.rng.choice(nodes)
            r = self.rng.random()
            if isinstance(node, str) and (path[-1:] == ("sdp",) or node.startswith("v=0")) and r < 0.7:
                new: Any = self.sdp(node)
            elif isinstance(node, dict) and r < 0.3 and node:
                del node[self.rng.choice(list(node))]
                continue
            elif isinstance(node, dict) and r < 0.55:
                node[self.key()] = self.value()
                continue
            elif isinstance(node, dict) and r < 0.6:
                node["type"] = self.rng.choice(TYPES)
                continue
            elif isinstance(node, list) and r < 0.4:
                node.insert(self.rng.randint(0, len(node)), self.value())
                continue
            elif isinstance(node, list) and r < 0.55 and node:
                del node[self.rng.randrange(len(node))]
                continue
            elif r < 0.05:
                new = self.nested()
            elif r < 0.15 and isinstance(node, (list, dict)):
                new = [node]
            else:
                new = self.value()
            if not path:
                tree = new
            else:
                parent = tree
                for step in path[:-1]:
                    parent = parent[step]
                parent[path[-1]] = new
        return tree

    def seed_tree(self) -> Any:
        return json.loads(self.rng.choice(self.seeds))

    def message(self) -> bytes:
        """One adversarial message (bytes as they would arrive in a WebSocket frame)."""
        r = self.rng.random()
        if r < 0.05:  # something that is not a seed at all
            choice = self.rng.random()
            if choice < 0.4:
                return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, 64)))
            if choice < 0.7:
                return self.string().encode("utf-8", "surrogatepass")
            return self._dumps(self.value())
        if r < 0.06:  # nesting far beyond any recursion limit, around a typed message
            depth = self.rng.choice([1000, 10000, 200000])
            kind = self.rng.choice(TYPES)
            return ('{"type":"%s","data":' % kind + "[" * depth + "]" * depth + "}").encode()
        tree = self.mutate_tree(self.seed_tree())
        data = self._dumps(tree)
        if self.rng.random() < 0.12:
            data = self.damage_bytes(data)
        return data

    def _dumps(self, tree: Any) -> bytes:
        try:
            text = json.dumps(tree, ensure_ascii=self.rng.random() < 0.3, separators=(",", ":"))
        except (ValueError, RecursionError):
            text = "[" * 100000
        return text.encode("utf-8", "surrogatepass")

    def damage_bytes(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            r = self.rng.random()
            i = self.rng.randrange(len(buf) + 1)
            if r < 0.3 and buf:
                buf[min(i, len(buf) - 1)] = self.rng.getrandbits(8)
            elif r < 0.5:
                buf[i:i] = self.rng.choice([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b'"', b"{", b"]", b","])
            elif r < 0.7:
                del buf[i:i + self.rng.randint(1, 16)]
            elif r < 0.85:
                buf = buf[:i]
            else:
                j = self.rng.randrange(len(buf) + 1)
                buf[i:i] = buf[j:j + self.rng.randint(1, 64)]
        return bytes(buf)

    # ------------------------------------------------------------------ WebSocket frames
    def frame(self, payload: Optional[bytes] = None) -> bytes:
        """One or more raw server->client frames, some invalid."""
        out = bytearray()
        for _ in range(self.rng.randint(1, 3)):
            out += self._one_frame(payload)
        if self.rng.random() < 0.1:
            out = bytearray(self.damage_bytes(bytes(out)))
        return bytes(out)

    def _one_frame(self, payload: Optional[bytes]) -> bytes:
        rng = self.rng
        if payload is None or rng.random() < 0.3:
            payload = rng.choice([b"", b"{}", b'{"type":"ping"}', b"\xff\xfe", b"x" * rng.randint(0, 300),
                                  struct.pack("!H", rng.choice([1000, 1001, 1005, 1006, 999, 5000, 0, 4999, 3000]))
                                  + rng.choice([b"", b"bye", b"\xff", b"r" * 130])])
        opcode = rng.choice([0x0, 0x1, 0x1, 0x2, 0x2, 0x8, 0x9, 0xA, 0x3, 0x7, 0xB, 0xF])
        fin = rng.random() < 0.8
        rsv = rng.choice([0, 0, 0, 0x10, 0x20, 0x40])
        masked = rng.random() < 0.05
        size = len(payload)
        if rng.random() < 0.1:  # a lying length
            size = rng.choice([0, 1, 125, 126, 127, 65535, 65536, 2 ** 24, 2 ** 63 - 1, 2 ** 64 - 1, size + 1])
        head = bytearray([(0x80 if fin else 0) | rsv | opcode])
        form = rng.random()
        if size < 126 and form < 0.8:
            head.append((0x80 if masked else 0) | size)
        elif size < 65536 and form < 0.95:
            head.append((0x80 if masked else 0) | 126)
            head += struct.pack("!H", size)
        else:
            head.append((0x80 if masked else 0) | 127)
            head += struct.pack("!Q", min(size, 2 ** 64 - 1))
        if masked:
            head += bytes(rng.getrandbits(8) for _ in range(4))
        return bytes(head) + payload

    def http_head(self, accept: str) -> bytes:
        """An HTTP response head to a WebSocket upgrade, valid or damaged."""
        lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Accept: %s" % accept, "Server: fuzz"]
        for _ in range(self.rng.randint(0, 4)):
            i = self.rng.randrange(len(lines))
            r = self.rng.random()
            if r < 0.3:
                del lines[i]
                if not lines:
                    lines.append("")
            elif r < 0.6:
                lines[i] = self._damage_line(lines[i])
            elif r < 0.8:
                lines.insert(i, self.rng.choice(["X: " + self.string(), self.string(), "HTTP/1.1 ¹01 OK",
                                                 "Upgrade: h2c", "Connection: close", ": ", "Upgrade:"]))
            elif r < 0.9:
                lines[i] = lines[i].upper() if self.rng.random() < 0.5 else lines[i].lower()
            else:
                lines[0] = "%s %s %s" % (self.rng.choice(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "", "http/1.1"]),
                                         self.rng.choice(["101", "¹01", "1０1", "101x", "", "99999999999999999999",
                                                          "-101", "200", "403"]),
                                         self.rng.choice(["Switching Protocols", "", "OK"]))
        text = "\r\n".join(lines)
        try:  # the head is read as latin-1: one byte per character, as a server would send it
            head = text.encode("latin-1") if self.rng.random() < 0.5 else text.encode("utf-8", "surrogatepass")
        except UnicodeEncodeError:
            head = text.encode("utf-8", "surrogatepass")
        if self.rng.random() < 0.1:
            head = self.damage_bytes(head)
        return head
