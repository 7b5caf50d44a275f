"""Real party-server processes and a fault-injecting HTTP proxy, for the fault tests.

:class:`PartyServer` runs ``python -m party_server --config host.toml`` as a user would
(optionally with a file-size limit, which makes every write past it fail as a full disk
does). :class:`FaultProxy` sits between the guest and a party server and, per answer,
passes it on, delays it, truncates it, corrupts it or replaces it.
"""

import contextlib
import datetime
import http.client
import io
import json
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests

from fedsk.federation._wire import MAGIC

from .conftest import TOKEN, write_host

__all__ = ["FaultProxy", "PartyServer", "Reply", "array_span", "free_port", "write_toml"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value):
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()  # (a TOML date or offset date-time, unquoted)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_toml(path, cfg):
    """Write a party-server config dict (tables nested at most two levels) as TOML."""
    lines, tables = [], []

    def emit(prefix, table):
        sub = []
        for k, v in table.items():
            if isinstance(v, dict):
                sub.append((f"{prefix}.{k}" if prefix else k, v))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        tables.extend(sub)

    emit("", cfg)
    while tables:
        name, table = tables.pop(0)
        lines.append(f"[{name}]")
        emit(name, table)
    Path(path).write_text("\n".join(lines) + "\n")


class PartyServer:
    """One ``party-server`` process for ``df`` (indexed by sample ID) on a free port.

    Parameters
    ----------
    tmp_path : Path
    df : DataFrame
    max_file_bytes : int, optional
        ``RLIMIT_FSIZE`` of the process: writes that would make a file larger fail
        (``EFBIG``), as on a full disk. Only regular files count, not the log pipe.
    **extra
        Config keys (``session_ttl=1.0``, ``models={"max_models": 3}``, ...).
    """

    def __init__(self, tmp_path, df, *, name="insurer", max_file_bytes=None, **extra):
        self.name = name
        self.port = free_port()
        cfg = write_host(Path(tmp_path), df, name=name, bind=f"127.0.0.1:{self.port}", **extra)
        self.cfg = cfg
        self.home = Path(tmp_path) / name
        self.config_path = self.home / "host.toml"
        write_toml(self.config_path, cfg)
        self.state_dir = Path(cfg["state_dir"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = TOKEN
        self.max_file_bytes = max_file_bytes
        self.proc = None
        self._log = self.home / "server.log"

    def start(self, *, wait=True, timeout=60.0):
        limit = self.max_file_bytes

        def preexec():
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        self._logfile = open(self._log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "party_server", "--config", str(self.config_path)],
            stdout=subprocess.PIPE if limit is not None else self._logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,
        )
        if limit is not None:  # drain the pipe so that the server never blocks on it
            threading.Thread(target=self._drain, daemon=True).start()
        if wait:
            self.wait_healthy(timeout)
        return self

    def _drain(self):
        for line in self.proc.stdout:
            self._logfile.write(line)
            self._logfile.flush()

    def wait_healthy(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"party server exited at start:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"party server not healthy in {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        time.sleep(0.1)
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        with contextlib.suppress(AttributeError):
            self._logfile.close()

    def restart(self, **changes):
        self.stop()
        for k, v in changes.items():
            setattr(self, k, v)
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def host_spec(self, url=None):
        return {"url": url or self.url, "dataset": "customers", "token": self.token}


@contextlib.contextmanager
def gunicorn_server(tmp_path, config_path, crt, key, extra_args=()):
    """The documented deployment: gunicorn with TLS serving ``party_server.wsgi:app``.

    Yields ``(url, port, process)`` once it answers its health check. ``extra_args`` go
    to gunicorn's command line (e.g. ``["--preload"]``).
    """
    import os

    import gunicorn

    port = free_port()
    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ,
        FEDSK_PARTY_CONFIG=str(config_path),
        PYTHONPATH=os.pathsep.join([str(root), str(Path(gunicorn.__file__).parents[1])]),
    )
    log_path = Path(tmp_path) / "gunicorn.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:party_server.gunicorn_config"]
        + ["--certfile", str(crt), "--keyfile", str(key), "--bind", f"127.0.0.1:{port}"]
        + [*extra_args, "party_server.wsgi:app"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/v1/health", verify=str(crt), timeout=2).ok:
                    break
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield url, port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- the proxy -------------------------------------------------------------------------------
class Reply:
    """What the proxy sends back for one answer (see :class:`FaultProxy`)."""

    def __init__(self, status, headers, body, *, delay=0.0, cut_at=None):
        self.status, self.headers, self.body = status, headers, body
        self.delay = delay  # seconds before answering
        self.cut_at = cut_at  # close the connection after this many body bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _forward(self):
        self.server.proxy.handle(self)

    do_GET = do_POST = do_DELETE = do_PUT = _forward


class FaultProxy:
    """An HTTP proxy in front of ``upstream`` whose ``fault`` decides each answer.

    ``fault(method, path, reply) -> Reply`` gets the real answer as a :class:`Reply`
    and returns it unchanged or altered; ``None`` (the default) passes everything on.
    ``faults`` counts the answers a fault changed.
    """

    def __init__(self, upstream):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.fault = None
        self.faults = 0
        self.requests = 0
        self.paths = []  # of every request, in order
        self.released = threading.Event()  # ends every pending delay at once
        self.errors = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server.proxy = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        if self.errors and exc[0] is None:
            raise self.errors[0]

    def handle(self, h):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            answer = Reply(
                resp.status,
                {k: v for k, v in resp.getheaders() if k.lower() == "content-type"},
                resp.read(),
            )
        finally:
            conn.close()
        with self._lock:
            self.requests += 1
            self.paths.append(h.path)
        fault = self.fault
        try:
            reply = fault(h.command, h.path, answer) if fault is not None else answer
        except Exception as exc:  # a bug in the test's fault: fail the test, not the guest
            self.errors.append(exc)
            reply = answer
        if reply is not answer:
            with self._lock:
                self.faults += 1
        if reply.delay:
            self.released.wait(reply.delay)
        try:
            h.send_response(reply.status)
            for k, v in reply.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(reply.body)))
            h.end_headers()
            if reply.cut_at is None:
                h.wfile.write(reply.body)
            else:
                h.wfile.write(reply.body[: reply.cut_at])
                h.wfile.flush()
                h.close_connection = True
                with contextlib.suppress(OSError):
                    h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:  # the client gave up (timed out) meanwhile
            h.close_connection = True


# -- locating things in a fedsk message --------------------------------------------------------
def array_span(body, name):
    """``(start, end)`` byte offsets of array ``name``'s data inside a message body."""
    (hlen,) = struct.unpack(">I", body[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    header = json.loads(body[start : start + hlen])
    pos = start + hlen
    for entry in header["arrays"]:
        blob = body[pos : pos + entry["nbytes"]]
        if entry["name"] == name:
            buf = io.BytesIO(blob)
            if np.lib.format.read_magic(buf) == (1, 0):
                np.lib.format.read_array_header_1_0(buf)
            else:
                np.lib.format.read_array_header_2_0(buf)
            return pos + buf.tell(), pos + entry["nbytes"]
        pos += entry["nbytes"]
    raise KeyError(name)
