"""What the DIRAC Pilot's remote logging costs the Pilot, per receiver (run by bench/run.py).

    python relay_probe.py noop raw|http|raw-intake   # a no-op HTTP server; prints its URL, serves until killed
    python relay_probe.py posts N WAY URL...     # N sendMessage posts to each URL, in turns: p50/p99 (JSON)
    python relay_probe.py pilot URL BUFSIZE LINES   # a Pilot logging LINES lines: seconds (JSON)

Every post is made as the DIRAC Pilot makes it: the stand-in of tests/dirac/standin_pilot.py,
written from the Pilot's code, urlencodes ``method`` and ``args`` and calls
``urllib.request.urlopen`` (a new connection each time).  WAY says how much of the Pilot's
``sendMessage`` is timed:

* ``post``: the POST alone -- urlopen of the form (with, for https, a client context made once
  beforehand: the test PKI's CA directory and proxy-style credentials);
* ``sendmessage``: the stand-in's whole ``sendMessage``, which builds a new TLS context for every
  post, as the Pilot does (``ssl.create_default_context()`` loads the system's CA bundle, then
  ``X509_CERT_DIR`` and ``X509_USER_PROXY``), even for an http:// URL.

The no-op servers answer at once, each in its own process:

* ``raw``: a socket server of a few lines, one connection at a time: accept, read the request
  line and headers up to the blank line and the body by its Content-Length, send a fixed 200
  answer, close.  The floor of any HTTP server here: what the Pilot's urllib and the kernel cost.
* ``http``: the standard library's own server (``http.server`` with a thread per connection, as
  the relay was first built): the same answer after ``BaseHTTPRequestHandler`` parsed the request.

Not a no-op, for where the relay's time goes: ``raw-intake``, the raw server storing each post
with the relay's own ``Intake.take`` (DIRAC's form read, the record written into the spool and
renamed, ``log_fsync`` from the environment) before its answer -- the relay without its HTTP
server, its peer check and its deadlines.

``pilot``: the stand-in's ``RemoteLogger`` (``RemoteLoggerBufsize`` = BUFSIZE) logs LINES lines of
an install-like text, each printed (to /dev/null here) and buffered as the Pilot does, posting
whenever BUFSIZE lines wait, and flushes at the end: the time of the whole loop.
"""

import json
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "dirac"))

ANSWER_BODY = b'{"OK": true, "Value": null}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
    len(ANSWER_BODY),
    ANSWER_BODY,
)
PILOT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
VO = "dteam"
#: One line as the Pilot's RemoteLogger buffers it (RemoteLoggerBufsize 1: one post per line).
LINE = (
    "2026-12-04T10:00:00.123456Z INFO [InstallDIRAC] Installing DIRAC v9.1.22 from https://diracproject.example.org\n"
)


def noop_raw(store=None) -> None:
    """The raw no-op; with ``store`` (the relay's Intake.take) each body is stored before the answer."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print("http://127.0.0.1:%d/" % listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            if store is not None:
                store(body)
            conn.sendall(ANSWER)


def relay_intake():
    """The relay's own ``Intake.take`` (reading DIRAC's form, the spool's put), configured from the
    environment as ``pilotlog relay`` is: what a post costs the relay without its HTTP server."""
    sys.path.insert(0, os.path.dirname(HERE))
    from pilotlogger.config import load
    from pilotlogger.relay import Intake

    return Intake(load({})).take


def noop_http() -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from socketserver import ThreadingMixIn

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ANSWER_BODY)))
            self.end_headers()
            self.wfile.write(ANSWER_BODY)

        def log_message(self, *args):
            pass

    class Server(ThreadingMixIn, HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    print("http://127.0.0.1:%d/" % server.server_address[1], flush=True)
    server.serve_forever()


def client_context():
    """The Pilot's client context (its sendMessage's), made once: for ``post`` to https."""
    import ssl

    context = ssl.create_default_context()
    context.load_verify_locations(capath=os.environ["X509_CERT_DIR"])
    context.load_cert_chain(os.environ["X509_USER_PROXY"])
    return context


def posts(n: int, way: str, urls: list) -> dict:
    """p50/p99 (ms) of n posts to each URL, made in turns of 10 so that every URL sees the same
    moments of this shared machine; 20 posts to each first, untimed."""
    from urllib.parse import urlencode
    from urllib.request import urlopen

    import standin_pilot

    data = urlencode({"method": "sendMessage", "args": json.dumps((json.dumps(LINE), PILOT, VO))}).encode("utf-8")
    context = client_context()

    def post(url):
        if way == "post":
            urlopen(url, data, context=context if url.startswith("https:") else None).close()
        else:
            standin_pilot.sendMessage(url, PILOT, VO, "sendMessage", LINE)

    times: dict = {url: [] for url in urls}
    for url in urls:
        for _ in range(20):
            post(url)
    clock = time.perf_counter
    for _ in range(0, n, 10):
        for url in urls:
            for _ in range(10):
                started = clock()
                post(url)
                times[url].append(clock() - started)
    out = {}
    for url, spent in times.items():
        spent.sort()
        out[url] = {"n": len(spent), "p50": spent[len(spent) // 2] * 1e3, "p99": spent[int(len(spent) * 0.99)] * 1e3}
    return out


def pilot(url: str, bufsize: int, lines: int) -> dict:
    """Seconds a Pilot's RemoteLogger takes to log ``lines`` lines through ``url`` (its stdout to /dev/null)."""
    import standin_pilot

    logger = standin_pilot.RemoteLogger(url, name="InstallDIRAC", bufsize=bufsize, pilotUUID=PILOT, wnVO=VO)
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
        started = time.perf_counter()
        for i in range(lines):
            logger.info("Installing DIRAC: step %d of %d, from https://diracproject.example.org" % (i, lines))
        logger.buffer.flush()
        spent = time.perf_counter() - started
    finally:
        sys.stdout.close()
        sys.stdout = stdout
    return {"seconds": spent, "lines": lines, "bufsize": bufsize}


def main(argv) -> None:
    if argv[0] == "noop":
        if argv[1] == "http":
            noop_http()
        noop_raw(relay_intake() if argv[1] == "raw-intake" else None)
    elif argv[0] == "posts":
        print(json.dumps(posts(int(argv[1]), argv[2], argv[3:])))
    elif argv[0] == "pilot":
        print(json.dumps(pilot(argv[1], int(argv[2]), int(argv[3]))))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
