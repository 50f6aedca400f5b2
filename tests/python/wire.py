"""shoal's wire format by hand, for tests that speak it below the client: raw
connections, frames, replies."""
import socket
import struct

import msgpack


def raw(path, timeout=10):
    """A connected socket to shoald at `path` (a Daemon's .socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(timeout)
    return s


def frame(body):
    """A frame around `body` (bytes), or around a message (a dict, packed here)."""
    if isinstance(body, dict):
        body = msgpack.packb(body)
    return struct.pack("<I", len(body)) + body


def read_reply(s):
    """The next reply on `s` as a dict, or None once shoald closed the connection."""
    hdr = b""
    while len(hdr) < 4:
        chunk = s.recv(4 - len(hdr))
        if not chunk:
            return None
        hdr += chunk
    (n,) = struct.unpack("<I", hdr)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return msgpack.unpackb(body, raw=False)
