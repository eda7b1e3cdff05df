"""A real rsyslogd receiving on 127.0.0.1 (UDP, TCP, TLS), and a plain TCP listener.

``Rsyslog`` runs the system's rsyslogd in the foreground with a private config:
no system inputs (imuxsock, imklog), so it never touches the machine's own
logging, and each network message written as received (``%rawmsg%``) to
``received.log``. Checked facts behind the config are in shared/PEERS.md.

``PlainTcpListener`` plays a server that is not what the client expects: a
plaintext server on the TLS port, or one that resets the connection.
"""

import os
import signal
import socket
import struct
import subprocess
import threading
import time
from typing import List, Optional

RSYSLOGD = "rsyslogd"
START_TIMEOUT = 10.0
POLL = 0.02

CONFIG = """\
global(workDirectory="{work}"
       maxMessageSize="{max_message_size}"
       parser.escapeControlCharactersOnReceive="off"
       defaultNetstreamDriverCAFile="{ca}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imtcp" maxSessions="100")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="recv") {{
  action(type="omfile" file="{work}/received.log" template="raw"
         asyncWriting="off" flushOnTXEnd="on")
}}
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="recv" rcvbufSize="4m")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{work}/tcp.port"
      ruleset="recv" name="tcp")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{work}/tls.port"
      ruleset="recv" name="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon"{tls_extra})
"""
# Why this shape:
# - escapeControlCharactersOnReceive off: a TAB (LEEF's delimiter) arrives as
#   TAB, not "#011".
# - imtcp, not imptcp: imptcp turned one over-long message into ~2,000 copies.
# - port="0" + listenPortFileName: the kernel picks a free TCP port and rsyslog
#   tells us which, so there is no race. imudp has no such option, so its port
#   is picked by us just before start (see _free_udp_port).
# - Only the "recv" ruleset writes received.log; rsyslog's own status and
#   error lines go to the default ruleset, which has no action, and so end up
#   on rsyslogd's stderr (captured in rsyslogd.out, see Rsyslog.log()).
# - omfile with asyncWriting off and flushOnTXEnd on: each batch is written
#   when rsyslog finishes it, so tests see messages within milliseconds.
# - TLS: rsyslog 8.2302's gtls offers TLS 1.2 only by default (a client that
#   insists on TLS 1.3 fails the handshake); tls_priority="NORMAL" (GnuTLS's
#   priority string) lets it negotiate TLS 1.3 too.


class RsyslogError(RuntimeError):
    """rsyslogd refused the config, or did not come up."""


class Rsyslog:
    """A private rsyslogd. Use as a context manager, or start()/stop().

    Attributes after start(): ``udp_port``, ``tcp_port``, ``tls_port``;
    ``received_path`` (received.log), ``ca`` (what a TLS client should trust).
    ``tls_priority``: a GnuTLS priority string for the TLS listener, e.g.
    "NORMAL" to allow TLS 1.3; None keeps rsyslog's default (TLS 1.2 only).
    received.log holds one line per message, so a message containing LF
    (possible with octet-counted framing) shows up as several lines.
    """

    def __init__(self, workdir: str, cert: str, key: str, max_message_size: str = "64k",
                 ca: Optional[str] = None, tls_priority: Optional[str] = None):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.cert, self.key = os.path.abspath(cert), os.path.abspath(key)
        # gtls wants a CA file even in anon mode; a client trusts this one.
        self.ca = os.path.abspath(ca) if ca else self.cert
        self.max_message_size = max_message_size
        self.tls_priority = tls_priority
        self.conf_path = os.path.join(self.workdir, "rsyslog.conf")
        self.pid_path = os.path.join(self.workdir, "rsyslogd.pid")
        self.out_path = os.path.join(self.workdir, "rsyslogd.out")
        self.received_path = os.path.join(self.workdir, "received.log")
        self.udp_port = self.tcp_port = self.tls_port = 0
        self._counted = (0, 0)  # (bytes of received.log scanned, LFs in them)
        self._proc: Optional[subprocess.Popen] = None

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> "Rsyslog":
        os.makedirs(self.workdir, exist_ok=True)
        self.udp_port = _free_udp_port()
        self._write_config()
        self._check_config()
        with open(self.out_path, "ab") as out:
            self._proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", self.conf_path, "-i", self.pid_path],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop rsyslogd by the pid in its pid file. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pid = _read_int(self.pid_path) or proc.pid  # -n: the pid file names our child
        if proc.poll() is None:
            os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by its handle
            proc.wait()

    def __enter__(self) -> "Rsyslog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what arrived ------------------------------------------------------

    def received(self, start: int = 0) -> List[bytes]:
        """Complete lines of received.log (without their LF), from line ``start`` on."""
        try:
            with open(self.received_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        # Drop a tail without LF: rsyslog may be mid-write.
        return data.split(b"\n")[:-1][start:]

    def mark(self) -> int:
        """The number of lines so far: pass it as ``start`` to see only later ones."""
        return self.line_count()

    def line_count(self) -> int:
        """Complete lines in received.log, reading only what is new since the last call."""
        scanned, lines = self._counted
        try:
            with open(self.received_path, "rb") as f:
                f.seek(scanned)
                new = f.read()
        except FileNotFoundError:
            new = b""
        complete = new.rfind(b"\n") + 1  # leave a half-written line for next time
        self._counted = (scanned + complete, lines + new.count(b"\n", 0, complete))
        return self._counted[1]

    def wait_for(self, count: int, timeout: float = 30, start: int = 0,
                 settle: float = 0.2) -> List[bytes]:
        """Wait until at least ``count`` lines arrived after line ``start``, then
        no more for ``settle`` seconds (so extra copies would show); return them."""
        deadline = time.monotonic() + timeout
        seen, stable_since = self.line_count() - start, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(POLL)
            now = self.line_count() - start
            if now != seen:
                seen, stable_since = now, time.monotonic()
            elif seen >= count and time.monotonic() - stable_since >= settle:
                return self.received(start)
        lines = self.received(start)
        raise AssertionError(
            "rsyslog received %d of %d lines within %ss; last: %r; rsyslogd said: %s"
            % (len(lines), count, timeout, lines[-3:], self.log()[-2000:]))

    def log(self) -> str:
        """rsyslogd's own stdout/stderr (its status and error messages)."""
        try:
            with open(self.out_path, "r", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # --- helpers -----------------------------------------------------------

    def _write_config(self) -> None:
        tls_extra = ' gnutlsPriorityString="%s"' % self.tls_priority if self.tls_priority else ""
        values = dict(work=self.workdir, ca=self.ca, cert=self.cert, key=self.key,
                      max_message_size=self.max_message_size, udp_port=self.udp_port,
                      tls_priority=self.tls_priority or "")
        for name, value in values.items():
            if '"' in str(value):
                raise ValueError("rsyslog config value %s=%r contains a quote" % (name, value))
        with open(self.conf_path, "w") as f:
            f.write(CONFIG.format(tls_extra=tls_extra, **values))
        for name in ("tcp.port", "tls.port", "rsyslogd.pid"):
            _remove(os.path.join(self.workdir, name))  # stale ones would fool _wait_ready

    def _check_config(self) -> None:
        result = subprocess.run([RSYSLOGD, "-N1", "-f", self.conf_path],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            raise RsyslogError("rsyslogd -N1 rejected %s:\n%s%s"
                               % (self.conf_path, result.stdout, result.stderr))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RsyslogError("rsyslogd exited with %s:\n%s" % (self._proc.returncode, self.log()))
            if self._ports_ready():
                return
            time.sleep(POLL)
        raise RsyslogError("rsyslogd not listening after %ss:\n%s" % (START_TIMEOUT, self.log()))

    def _ports_ready(self) -> bool:
        # rsyslog writes a port file only once that TCP port listens.
        self.tcp_port = _read_int(os.path.join(self.workdir, "tcp.port"))
        self.tls_port = _read_int(os.path.join(self.workdir, "tls.port"))
        return bool(self.tcp_port and self.tls_port and _read_int(self.pid_path)
                    and _udp_port_taken(self.udp_port))


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _udp_port_taken(port: int) -> bool:
    """True once someone (rsyslogd) has bound 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# --- a plain TCP listener -------------------------------------------------


class PlainTcpListener:
    """Accepts TCP connections on 127.0.0.1 and records what each one sent.

    ``reset_after=N``: after N bytes on a connection, close it with an RST
    (SO_LINGER 0), as a crashing or overloaded peer does.
    ``reply``: bytes sent back once a connection's first data arrived, e.g. to
    answer a TLS ClientHello with plaintext instead of letting it wait.
    ``accept=N``: after N connections the port closes, as a server going down
    in mid-run does (the accepted ones are still served to their end).
    """

    def __init__(self, reset_after: Optional[int] = None, reply: bytes = b"", accept: Optional[int] = None):
        self.reset_after = reset_after
        self.reply = reply
        self.accept = accept
        self.port = 0
        self.connections: List[bytearray] = []  # one per accepted connection
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._threads: List[threading.Thread] = []

    @property
    def data(self) -> bytes:
        """Everything received, all connections joined in order of acceptance."""
        with self._lock:
            return b"".join(bytes(c) for c in self.connections)

    def start(self) -> "PlainTcpListener":
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(POLL * 5)  # so the accept loop notices stop()
        self.port = self._sock.getsockname()[1]
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()      # (closing twice is harmless)
            self._sock = None

    def __enter__(self) -> "PlainTcpListener":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for_bytes(self, count: int, timeout: float = 10) -> bytes:
        """Wait until at least ``count`` bytes arrived in total; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.data) < count:
            if time.monotonic() > deadline:
                raise AssertionError("listener got %d of %d bytes within %ss"
                                     % (len(self.data), count, timeout))
            time.sleep(POLL)
        return self.data

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            with self._lock:
                self.connections.append(bytearray())
                record = self.connections[-1]
            self._spawn(self._serve, conn, record)
            if self.accept is not None and len(self.connections) >= self.accept:
                self._sock.close()      # from now on, connections are refused
                return

    def _serve(self, conn: socket.socket, record: bytearray) -> None:
        conn.settimeout(POLL * 5)
        with conn:
            while not self._stopping.is_set():
                want = 65536 if self.reset_after is None else self.reset_after - len(record)
                if want <= 0:
                    return _reset(conn)
                try:
                    chunk = conn.recv(want)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                self._record(conn, record, chunk)

    def _record(self, conn: socket.socket, record: bytearray, chunk: bytes) -> None:
        with self._lock:
            first = not record
            record += chunk
        if first and self.reply:
            try:
                conn.sendall(self.reply)
            except OSError:
                pass  # the client already gave up; what it sent is recorded


def _reset(conn: socket.socket) -> None:
    # SO_LINGER on with timeout 0: close() sends RST instead of FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
