"""An HTTP client for both kinds of address shoald's HTTP fronts take (a Unix socket path or
HOST:PORT), used by test_metrics.py and test_http.py."""
import http.client
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def connect(address, timeout=30):
    if address.startswith("/"):
        return UnixHTTPConnection(address, timeout)
    host, port = address.rsplit(":", 1)
    return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)


def request(address, method="GET", path="/metrics", body=None, headers=None):
    conn = connect(address)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
