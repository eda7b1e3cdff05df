"""A Splunk HTTP Event Collector test server, faithful to shared/hec-codes.md.

Splunk cannot be installed here, so this plays it: HTTPS with keep-alive, the
event, health and ack endpoints, token and index checks, HEC's codes and
texts, all-or-nothing batches with ``invalid-event-number``, gzip, indexer
acknowledgement, and hooks to make it busy, slow or picky.

Choices where Splunk's documentation is silent (documented here, not guessed
silently):
- A Content-Encoding other than gzip (e.g. deflate) is not decoded, so the
  body is not JSON: 400 code 6 "Invalid data format", invalid-event-number 0.
  Splunk documents gzip support only.
- 413 (over ``max_content_length``, measured on the bytes sent, as Splunk
  compares Content-Length) carries ``{"text": ...}`` without an HEC code.
- A ``channel`` given to a token without acks must still be a GUID (code 11).
- A body without Content-Length (e.g. chunked) gets 411 and the connection is
  closed; the client under test always knows its body size.
- A POST with a bad event keeps the events before it, as SPEC section 5 says HEC
  does ("the events before it are delivered"); partial_batches=False refuses it whole.
- ``delay_next`` sleeps, then processes the request normally: events sent by a
  client that gave up waiting are still accepted, as a slow Splunk would.
"""

import gzip
import json
import re
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Optional, Set
from urllib.parse import parse_qs, urlsplit

TOKEN = "11111111-2222-3333-4444-555555555555"      # any index, no acks
ACK_TOKEN = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"  # any index, acks on
EVENT_PATHS = ("/services/collector/event", "/services/collector", "/services/collector/event/1.0")
HEALTH_PATHS = ("/services/collector/health", "/services/collector/health/1.0")
ACK_PATH = "/services/collector/ack"
GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
MAX_CONTENT_LENGTH = 800 * 1024 * 1024  # current Splunk; releases before 6.5: 1 MB
# A body the server will not use (a refused request) is still read up to this
# size, so the client gets to read the reply instead of a reset connection.
DRAIN_LIMIT = 64 * 1024 * 1024

TEXTS = {
    0: "Success", 1: "Token disabled", 2: "Token is required", 3: "Invalid authorization",
    4: "Invalid token", 5: "No data", 6: "Invalid data format", 7: "Incorrect index",
    8: "Internal server error", 9: "Server is busy", 10: "Data channel is missing",
    11: "Invalid data channel", 12: "Event field is required",
    13: "Event field cannot be blank", 14: "ACK is disabled",
    15: "Error in handling indexed fields", 17: "HEC is healthy",
}
STATUS_OF_CODE = {0: 200, 1: 403, 2: 401, 3: 401, 4: 403, 8: 500, 9: 503, 17: 200}  # else 400
# What fail_next answers for each status when no HEC code is given: Splunk's
# own 500/503, or (408, 429, 501) what a proxy or load balancer in front says.
FAILURES = {
    503: (9, None), 500: (8, None), 408: (None, "Request Timeout"),
    429: (None, "Too Many Requests"), 501: (None, "Not Implemented"),
}


class HecReply(Exception):
    """Stop handling a request and answer with this HEC reply."""

    def __init__(self, code: int, event_number: Optional[int] = None):
        super().__init__(TEXTS[code])
        self.code, self.event_number = code, event_number

    def body(self) -> Dict[str, Any]:
        body = {"text": TEXTS[self.code], "code": self.code}
        if self.event_number is not None:
            body["invalid-event-number"] = self.event_number
        return body

    @property
    def status(self) -> int:
        return STATUS_OF_CODE.get(self.code, 400)


@dataclass
class Request:
    """What the server saw of one request and what it answered."""

    method: str
    path: str              # without the query string
    headers: Dict[str, str]
    connection: int        # id of the TLS connection it came on (keep-alive checks)
    status: int = 0
    reply: Dict[str, Any] = field(default_factory=dict)
    raw_size: int = 0      # body bytes as sent (compressed if gzip)
    body_size: int = 0     # body bytes after gzip decoding (what batch bounds measure)
    gzip: bool = False
    channel: Optional[str] = None
    events: int = 0        # envelopes accepted from this request

    @property
    def code(self) -> Optional[int]:
        return self.reply.get("code")


@dataclass
class _Failure:
    status: int
    code: Optional[int]
    text: str
    retry_after: Optional[int]
    raw: Optional[bytes] = None     # a body that is not HEC's JSON (a web server, a proxy)


class HecServer:
    """The HEC test server. Use as a context manager, or start()/stop().

    Behaviour (change between or during tests; guarded by a lock):
      tokens             token -> {"indexes": set or None, "ack": bool, "disabled": bool}
      ack_delay          seconds before an ackId turns true
      max_content_length request bytes over which the reply is 413
      bad_marker         an event text containing it is rejected with code 6
      partial_batches    True (default): the events before a bad one are indexed
                         and only the rest refused, as SPEC section 5 describes
                         HEC. False: a POST with a bad event is refused whole.
      fail_next(), delay_next()
    Records (cleared by reset()):
      events       every accepted envelope (dict), in order
      posts        Request records of POSTs to the event endpoints
      requests     Request records of all requests (health, ack, 404 too)
      connections  TLS connections accepted; handshake_errors: failed handshakes
    """

    def __init__(self, cert: str, key: str, ca: Optional[str] = None):
        self.cert, self.key = cert, key
        self.ca = ca  # not used by the server; what a client should trust
        self.lock = threading.RLock()
        self._httpd: Optional[_HttpsServer] = None
        self._thread: Optional[threading.Thread] = None
        self._next_connection = 0
        self._open: Set[ssl.SSLSocket] = set()
        self.restore_defaults()

    # --- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return "https://127.0.0.1:%d" % self.port

    @property
    def event_url(self) -> str:
        return self.url + EVENT_PATHS[0]

    def start(self) -> "HecServer":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self._httpd = _HttpsServer(("127.0.0.1", 0), _Handler, context, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections. Safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with self.lock:
            open_now = list(self._open)
        for sock in open_now:
            _shutdown(sock)  # wakes handler threads blocked reading the next request
        httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HecServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- behaviour ---------------------------------------------------------

    def restore_defaults(self) -> None:
        """Default behaviour and empty records, as after construction."""
        with self.lock:
            self.tokens: Dict[str, Dict[str, Any]] = {}
            self.set_token(TOKEN)
            self.set_token(ACK_TOKEN, ack=True)
            self.ack_delay = 0.0
            self.max_content_length = MAX_CONTENT_LENGTH
            self.bad_marker = "HEC-TEST-BAD-EVENT"
            self.partial_batches = True
            self._failures: List[_Failure] = []
            self._delays: List[float] = []
            self.reset()

    def reset(self) -> None:
        """Clear the records (events, posts, requests, connections, acks)."""
        with self.lock:
            self.events: List[Dict[str, Any]] = []
            self.posts: List[Request] = []
            self.requests: List[Request] = []
            self.connections = 0
            self.handshake_errors: List[str] = []
            self._acks: Dict[str, Dict[int, float]] = {}  # channel -> ackId -> ready at
            self._next_ack: Dict[str, int] = {}

    def set_token(self, token: str, indexes: Optional[Set[str]] = None,
                  ack: bool = False, disabled: bool = False) -> None:
        with self.lock:
            self.tokens[token] = {"indexes": None if indexes is None else set(indexes),
                                  "ack": ack, "disabled": disabled}

    def fail_next(self, n: int, status: int = 503, code: Optional[int] = None,
                  retry_after: Optional[int] = None, text: Optional[str] = None,
                  raw: Optional[bytes] = None) -> None:
        """The next n event POSTs get ``status`` (503 busy, 500, 408, 429, 501), with HEC's
        JSON answer, or with ``raw`` as the body (what a server that is not HEC says)."""
        default_code, default_text = FAILURES.get(status, (None, "Error"))
        code = default_code if code is None else code
        text = text or (TEXTS.get(code, "Error") if code is not None else default_text)
        with self.lock:
            self._failures += [_Failure(status, code, text, retry_after, raw)] * n

    def delay_next(self, n: int, seconds: float) -> None:
        """The next n event POSTs wait ``seconds`` before they are handled."""
        with self.lock:
            self._delays += [seconds] * n

    # --- used by the handler -----------------------------------------------

    def _take(self, queue_name: str):
        with self.lock:
            queue = getattr(self, queue_name)
            return queue.pop(0) if queue else None

    def _token(self, token: str) -> Optional[Dict[str, Any]]:
        with self.lock:
            info = self.tokens.get(token)
        if info is None:
            return None
        # Tests may assign tokens as plain dicts; missing keys take the defaults.
        return {"indexes": None, "ack": False, "disabled": False, **info}

    def _accept(self, envelopes: List[Dict[str, Any]], channel: Optional[str],
                ack: bool) -> Dict[str, Any]:
        with self.lock:
            self.events.extend(envelopes)
            if not ack:
                return {"text": "Success", "code": 0}
            ack_id = self._next_ack.get(channel, 0)
            self._next_ack[channel] = ack_id + 1
            self._acks.setdefault(channel, {})[ack_id] = time.monotonic() + self.ack_delay
            return {"text": "Success", "code": 0, "ackId": ack_id}

    def _query_acks(self, channel: str, ids: List[int]) -> Dict[str, bool]:
        now, answer = time.monotonic(), {}
        with self.lock:
            pending = self._acks.get(channel, {})
            for ack_id in ids:
                ready = ack_id in pending and pending[ack_id] <= now
                if ready:
                    del pending[ack_id]  # a true is reported once
                answer[str(ack_id)] = ready
        return answer

    def _record(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)
            if request.method == "POST" and request.path in EVENT_PATHS:
                self.posts.append(request)

    def _connected(self, sock: ssl.SSLSocket) -> int:
        with self.lock:
            self.connections += 1
            self._next_connection += 1
            self._open.add(sock)
            return self._next_connection

    def _disconnected(self, sock: ssl.SSLSocket) -> None:
        with self.lock:
            self._open.discard(sock)

    def wait_idle(self, timeout: float = 30) -> None:
        """Until every connection is closed: a request its client gave up on (a timeout test)
        is still handled, and its events must land before the next test looks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self._open:
                    return
            time.sleep(0.02)

    def _handshake_failed(self, error: Exception) -> None:
        with self.lock:
            self.handshake_errors.append(str(error))


class _HttpsServer(ThreadingHTTPServer):
    """Does the TLS handshake in the connection's thread, not in accept().

    Wrapping the listening socket would handshake inside accept(), where one
    stuck or refusing client blocks every other connection.
    """

    daemon_threads = True
    handshake_timeout = 10

    def __init__(self, address, handler, context: ssl.SSLContext, owner: HecServer):
        self.context, self.owner = context, owner
        super().__init__(address, handler)

    def finish_request(self, request: socket.socket, client_address) -> None:
        request.settimeout(self.handshake_timeout)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            return self.owner._handshake_failed(error)  # e.g. a client refusing our cert
        tls.settimeout(None)
        connection = self.owner._connected(tls)
        try:
            self.RequestHandlerClass(tls, client_address, self, connection)
        finally:
            self.owner._disconnected(tls)
            _shutdown(tls)
            tls.close()

    def handle_error(self, request, client_address) -> None:
        pass  # a client going away mid-request is part of the tests, not news


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive
    disable_nagle_algorithm = True    # else each reply waits for a delayed ACK
    timeout = 60                      # an idle keep-alive connection ends eventually
    server_version = "Splunkd"
    sys_version = ""

    def __init__(self, request, client_address, server, connection: int):
        self.connection_id = connection
        super().__init__(request, client_address, server)

    @property
    def owner(self) -> HecServer:
        return self.server.owner

    def log_message(self, format, *args) -> None:
        pass  # the records are the log

    # --- dispatch ----------------------------------------------------------

    def do_GET(self) -> None:
        request = self._new_request()
        if request.path in HEALTH_PATHS:
            return self._reply(request, 200, {"text": TEXTS[17], "code": 17})
        self._not_found(request)

    def do_POST(self) -> None:
        request = self._new_request()
        if request.path in EVENT_PATHS:
            return self._event_post(request)
        if request.path == ACK_PATH:
            return self._guarded(request, self._ack_post)
        self._not_found(request)

    def _new_request(self) -> Request:
        return Request(method=self.command, path=urlsplit(self.path).path,
                       headers=dict(self.headers.items()), connection=self.connection_id)

    def _not_found(self, request: Request) -> None:
        self._discard_body()
        self._reply(request, 404, {"text": "The requested URL was not found on this server.",
                                   "code": 404})

    # --- event endpoint ----------------------------------------------------

    def _event_post(self, request: Request) -> None:
        failure = self.owner._take("_failures")
        if failure is not None:
            return self._fail(request, failure)
        delay = self.owner._take("_delays")
        if delay:
            time.sleep(delay)
        self._guarded(request, self._events)

    def _fail(self, request: Request, failure: _Failure) -> None:
        self._discard_body()
        body = {"text": failure.text}
        if failure.code is not None:
            body["code"] = failure.code
        headers = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
        self._reply(request, failure.status, body, headers, raw=failure.raw)

    def _events(self, request: Request) -> Dict[str, Any]:
        body = self._read_body(request)
        token = self._authorize()
        channel = self._channel(request, required=token["ack"])
        envelopes, error = self._valid_prefix(body, token)
        if error is not None and not self.owner.partial_batches:
            raise error
        request.events = len(envelopes)
        accepted = self.owner._accept(envelopes, channel, token["ack"] and error is None)
        if error is not None:
            raise error  # partial_batches: the envelopes before the bad one stay accepted
        return accepted

    def _valid_prefix(self, body: bytes, token: Dict[str, Any]):
        """The envelopes before the first bad one, and the HecReply for it (or None)."""
        envelopes: List[Dict[str, Any]] = []
        try:
            for envelope in self._parse(body):
                self._check_envelope(envelope, len(envelopes), token)
                envelopes.append(envelope)
        except HecReply as error:
            if error.event_number is None:
                raise  # not about one event (e.g. "No data")
            return envelopes, error
        return envelopes, None

    def _parse(self, body: bytes) -> Iterator[Dict[str, Any]]:
        """Envelopes are JSON objects back to back, optionally whitespace between."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HecReply(6, 0)
        if not text.strip():
            raise HecReply(5)
        decoder, number, position = json.JSONDecoder(), 0, _skip_whitespace(text, 0)
        while position < len(text):
            try:
                envelope, position = decoder.raw_decode(text, position)
            except ValueError:
                raise HecReply(6, number)
            if not isinstance(envelope, dict):  # e.g. a JSON array of envelopes
                raise HecReply(6, number)
            yield envelope
            number, position = number + 1, _skip_whitespace(text, position)

    def _check_envelope(self, envelope: Dict[str, Any], number: int, token: Dict[str, Any]) -> None:
        if "event" not in envelope:
            raise HecReply(12, number)
        event = envelope["event"]
        if event is None or event in ("", {}, []) or (isinstance(event, str) and not event.strip()):
            raise HecReply(13, number)
        if "fields" in envelope and not _flat_fields(envelope["fields"]):
            raise HecReply(15, number)
        if "time" in envelope and not _valid_time(envelope["time"]):
            raise HecReply(6, number)
        if token["indexes"] is not None and "index" in envelope \
                and envelope["index"] not in token["indexes"]:
            raise HecReply(7, number)
        text = event if isinstance(event, str) else json.dumps(event)
        if self.owner.bad_marker and self.owner.bad_marker in text:
            raise HecReply(6, number)  # test hook: "this event is malformed"

    # --- ack endpoint ------------------------------------------------------

    def _ack_post(self, request: Request) -> Dict[str, Any]:
        body = self._read_body(request)
        token = self._authorize()
        if not token["ack"]:
            raise HecReply(14)
        channel = self._channel(request, required=True)
        try:
            ids = json.loads(body)["acks"]
            ids = [int(i) for i in ids]
        except (ValueError, KeyError, TypeError):
            raise HecReply(6)
        return {"acks": self.owner._query_acks(channel, ids)}

    # --- shared steps ------------------------------------------------------

    def _guarded(self, request: Request, step) -> None:
        """Run a step returning a 200 body; an HecReply raised on the way is the answer."""
        try:
            body = step(request)
        except _Answered:
            return
        except HecReply as reply:
            return self._reply(request, reply.status, reply.body())
        self._reply(request, 200, body)

    def _read_body(self, request: Request) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True  # cannot find the next request
            self._reply(request, 411, {"text": "Content-Length is required"})
            raise _Answered()
        if int(length) > self.owner.max_content_length:
            self._discard_body()
            self._reply(request, 413, {"text": "Content-Length of %s too large (maximum is %d)"
                                       % (length, self.owner.max_content_length)})
            raise _Answered()
        raw = self.rfile.read(int(length))
        request.raw_size = len(raw)
        return self._decode(request, raw)

    def _decode(self, request: Request, raw: bytes) -> bytes:
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "gzip":
            request.body_size = len(raw)
            return raw  # identity; anything else stays undecoded and fails to parse
        request.gzip = True
        try:
            body = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise HecReply(6, 0)
        request.body_size = len(body)
        return body

    def _authorize(self) -> Dict[str, Any]:
        header = self.headers.get("Authorization")
        if header is None:
            raise HecReply(2)
        scheme, _, token = header.partition(" ")
        if scheme != "Splunk" or not token.strip():
            raise HecReply(3)
        info = self.owner._token(token.strip())
        if info is None:
            raise HecReply(4)
        if info["disabled"]:
            raise HecReply(1)
        return info

    def _channel(self, request: Request, required: bool) -> Optional[str]:
        query = parse_qs(urlsplit(self.path).query)
        channel = self.headers.get("X-Splunk-Request-Channel") or query.get("channel", [None])[0]
        if channel is None and required:
            raise HecReply(10)
        if channel is not None and not GUID.match(channel):
            raise HecReply(11)
        request.channel = channel
        return channel

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) <= DRAIN_LIMIT:
            self.rfile.read(int(length))
        else:
            self.close_connection = True  # the next request cannot be found

    def _reply(self, request: Request, status: int, body: Dict[str, Any],
               headers: Optional[Dict[str, str]] = None, raw: Optional[bytes] = None) -> None:
        request.status, request.reply = status, body
        self.owner._record(request)
        data = json.dumps(body, separators=(",", ":")).encode() if raw is None else raw
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up (timeout tests)


class _Answered(Exception):
    """The reply was already sent (e.g. 411/413); nothing more to do."""


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _flat_fields(fields: Any) -> bool:
    """Indexed fields are flat: each value a string or a list of strings."""
    if not isinstance(fields, dict):
        return False
    return all(isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v))
               for v in fields.values())


def _valid_time(value: Any) -> bool:
    """Epoch seconds as a number or a numeric string (Splunk takes both)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
