"""The test peers themselves work: rsyslog, the plain listener, the HEC server, certs.

These also pin down facts the client has to live with (how rsyslog closes
TCP and TLS connections, how HEC rejects a batch), so a change of peer
behaviour shows up here first.
"""

import gzip
import json
import os
import socket
import ssl
import sys
import time
import uuid
import zlib

import pytest
import requests

from tests.peers import certs
from tests.peers.hec import ACK_TOKEN, TOKEN, HecServer

pytest_plugins = ["tests.peers.fixtures"]

LEEF = "<166>Mar  3 10:00:00 10.0.0.5 LEEF:2.0|Vendor|TMPS3|1.0|scan|^|devTime=x^sev=1\tTAB"


# --- helpers ----------------------------------------------------------------


def send_udp(port: int, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, ("127.0.0.1", port))


def send_tcp(port: int, data: bytes) -> bytes:
    """Send, half-close, and return what the server sent before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(100)


def tls_context(ca: str, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = check_hostname
    return context


def tls_connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return context.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


def close_tls(tls: ssl.SSLSocket) -> None:
    """Send close_notify; rsyslog answers by closing TCP without its own (see below)."""
    try:
        tls.unwrap()
    except ssl.SSLEOFError:
        pass


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def post(hec: HecServer, body, token=TOKEN, path="/services/collector/event", headers=None,
         **kwargs) -> requests.Response:
    all_headers = {} if token is None else {"Authorization": "Splunk " + token}
    all_headers.update(headers or {})
    if not isinstance(body, (bytes, str)):
        body = "".join(json.dumps(e) for e in body)
    return requests.post(hec.url + path, data=body, headers=all_headers, verify=hec.ca,
                         timeout=kwargs.pop("timeout", 10), **kwargs)


def reply(response: requests.Response) -> tuple:
    return response.status_code, response.json()


# --- rsyslog ----------------------------------------------------------------


def test_rsyslog_receives_udp_datagram_exactly(rsyslog):
    start = rsyslog.mark()
    message = ("<14>udp " + LEEF + " é").encode()
    send_udp(rsyslog.udp_port, message)
    assert rsyslog.wait_for(1, start=start) == [message]


def test_rsyslog_receives_lf_terminated_tcp_line(rsyslog):
    start = rsyslog.mark()
    send_tcp(rsyslog.tcp_port, b"<14>tcp\tline one\n<14>tcp\tline two\n")
    assert rsyslog.wait_for(2, start=start) == [b"<14>tcp\tline one", b"<14>tcp\tline two"]


def test_rsyslog_receives_octet_counted_tcp_frames(rsyslog):
    start = rsyslog.mark()
    frames = [b"<14>octet\tcounted", b"<14>second " + LEEF.encode()]
    send_tcp(rsyslog.tcp_port, b"".join(b"%d %s" % (len(f), f) for f in frames))
    assert rsyslog.wait_for(2, start=start) == frames


def test_rsyslog_receives_tls_line(rsyslog):
    start, log_start = rsyslog.mark(), len(rsyslog.log())
    with tls_connect(rsyslog.tls_port, tls_context(rsyslog.ca)) as tls:
        tls.sendall(b"<14>tls\t" + LEEF.encode() + b"\n")
        close_tls(tls)
    assert rsyslog.wait_for(1, start=start) == [b"<14>tls\t" + LEEF.encode()]
    assert "non-properly terminated" not in rsyslog.log()[log_start:]


def test_rsyslog_offers_tls_1_2_only_by_default(rsyslog):
    strict = tls_context(rsyslog.ca)
    strict.minimum_version = ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError):
        tls_connect(rsyslog.tls_port, strict)
    start = rsyslog.mark()
    with tls_connect(rsyslog.tls_port, tls_context(rsyslog.ca)) as tls:
        assert tls.version() == "TLSv1.2"
        tls.sendall(b"<14>tls 1.2\n")
        close_tls(tls)
    # Wait for every line sent to the shared rsyslog, or it may land after the
    # next test's mark() and be counted there.
    assert rsyslog.wait_for(1, start=start) == [b"<14>tls 1.2"]


def test_rsyslog_tls_priority_allows_tls_1_3(rsyslog_factory, tmp_path):
    files = certs.ca_signed(tmp_path, ["127.0.0.1"])
    server = rsyslog_factory(files.cert, files.key, ca=files.ca, tls_priority="NORMAL")
    with tls_connect(server.tls_port, tls_context(server.ca)) as tls:
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"<14>tls 1.3\n")
        close_tls(tls)
    assert server.wait_for(1) == [b"<14>tls 1.3"]


def test_rsyslog_closes_tcp_when_client_half_closes(rsyslog):
    # The client can wait for EOF after shutdown(SHUT_WR) to know rsyslog read it all.
    start = rsyslog.mark()
    assert send_tcp(rsyslog.tcp_port, b"<14>half close\n") == b""
    assert rsyslog.wait_for(1, start=start) == [b"<14>half close"]


def test_rsyslog_answers_close_notify_by_closing_tcp(rsyslog):
    # rsyslog (gtls) reads the client's close_notify and closes the TCP
    # connection without a close_notify of its own. Python 3.10+ then raises
    # SSLEOFError from unwrap() unless OP_IGNORE_UNEXPECTED_EOF is set; 3.9
    # returns the plain socket. Either way the data arrived and rsyslog logs
    # no error, unlike a close without unwrap().
    start, log_start = rsyslog.mark(), len(rsyslog.log())
    with tls_connect(rsyslog.tls_port, tls_context(rsyslog.ca)) as tls:
        tls.sendall(b"<14>close notify\n")
        if sys.version_info >= (3, 10):
            with pytest.raises(ssl.SSLEOFError):
                tls.unwrap()
        else:
            assert tls.unwrap().recv(10) == b""
    lenient = tls_context(rsyslog.ca)
    lenient.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)  # Python 3.10+
    with tls_connect(rsyslog.tls_port, lenient) as tls:
        tls.sendall(b"<14>lenient\n")
        with tls.unwrap() as plain:
            assert plain.recv(10) == b""
    assert rsyslog.wait_for(2, start=start) == [b"<14>close notify", b"<14>lenient"]
    assert "non-properly terminated" not in rsyslog.log()[log_start:]


def test_rsyslog_logs_a_tls_close_without_close_notify(rsyslog):
    start, log_start = rsyslog.mark(), len(rsyslog.log())
    with tls_connect(rsyslog.tls_port, tls_context(rsyslog.ca)) as tls:
        tls.sendall(b"<14>rude close\n")
    assert rsyslog.wait_for(1, start=start) == [b"<14>rude close"]
    assert wait_until(lambda: "non-properly terminated" in rsyslog.log()[log_start:])


def test_rsyslog_with_self_signed_cert_needs_pinning(rsyslog_factory, tmp_path):
    files = certs.self_signed(tmp_path)
    server = rsyslog_factory(files.cert, files.key)
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        tls_connect(server.tls_port, tls_context(files.ca))
    with tls_connect(server.tls_port, tls_context(files.ca, check_hostname=False)) as tls:
        tls.sendall(b"<14>pinned\n")
        close_tls(tls)
    assert server.wait_for(1) == [b"<14>pinned"]


def test_rsyslog_splits_an_over_long_tcp_message(rsyslog_factory, tmp_path):
    files = certs.ca_signed(tmp_path, ["127.0.0.1"])
    server = rsyslog_factory(files.cert, files.key, max_message_size="8k")
    message = b"<14>" + bytes(48 + i % 10 for i in range(9000))
    send_tcp(server.tcp_port, message + b"\n")
    # Cut at maxMessageSize (8k = 8192); the tail arrives as a bogus second
    # message, and the byte at the cut is lost.
    assert server.wait_for(2) == [message[:8192], message[8193:]]


def test_rsyslog_stop_ends_the_process(rsyslog_factory, tmp_path):
    files = certs.ca_signed(tmp_path, ["127.0.0.1"])
    server = rsyslog_factory(files.cert, files.key)
    with open(server.pid_path) as f:
        pid = int(f.read())
    server.stop()
    server.stop()  # twice is fine
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.tcp_port), timeout=2)


def test_rsyslog_wait_for_reports_a_shortfall(rsyslog):
    with pytest.raises(AssertionError, match="received 0 of 1 lines"):
        rsyslog.wait_for(1, timeout=0.3, start=rsyslog.mark())


# --- plain TCP listener -----------------------------------------------------


def test_plain_listener_records_bytes(plain_listener_factory):
    listener = plain_listener_factory()
    send_tcp(listener.port, b"abc\n")
    assert listener.wait_for_bytes(4) == b"abc\n"


def test_plain_listener_resets_after_n_bytes(plain_listener_factory):
    listener = plain_listener_factory(reset_after=5)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
        sock.sendall(b"0123456789")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    assert listener.data == b"01234"


def test_plain_listener_on_tls_port_fails_the_handshake(plain_listener_factory, tmp_path):
    files = certs.ca_signed(tmp_path)
    listener = plain_listener_factory(reply=b"not TLS\n")
    with pytest.raises(ssl.SSLError):
        tls_connect(listener.port, tls_context(files.ca))
    assert listener.data.startswith(b"\x16\x03")  # a TLS handshake record arrived


def test_silent_plain_listener_makes_the_handshake_time_out(plain_listener_factory, tmp_path):
    files = certs.ca_signed(tmp_path)
    listener = plain_listener_factory()
    with socket.create_connection(("127.0.0.1", listener.port), timeout=0.3) as sock:
        with pytest.raises(socket.timeout):
            tls_context(files.ca).wrap_socket(sock, server_hostname="127.0.0.1")


# --- HEC: authorization -----------------------------------------------------


EVENT = {"event": LEEF, "index": "scannedlog", "source": "TMPS3", "sourcetype": "tmps3:leef"}


def test_hec_accepts_events_back_to_back(hec):
    body = json.dumps(EVENT) + "\n " + json.dumps(dict(EVENT, event="second"))
    assert reply(post(hec, body)) == (200, {"text": "Success", "code": 0})
    assert [e["event"] for e in hec.events] == [LEEF, "second"]
    assert hec.posts[0].events == 2 and hec.posts[0].raw_size == len(body)


@pytest.mark.parametrize("token, headers, expected", [
    (None, {}, (401, {"text": "Token is required", "code": 2})),
    (None, {"Authorization": "Bearer " + TOKEN}, (401, {"text": "Invalid authorization", "code": 3})),
    ("not-a-known-token", {}, (403, {"text": "Invalid token", "code": 4})),
])
def test_hec_refuses_bad_authorization(hec, token, headers, expected):
    assert reply(post(hec, [EVENT], token=token, headers=headers)) == expected
    assert hec.events == []


def test_hec_refuses_a_disabled_token(hec):
    hec.set_token(TOKEN, disabled=True)
    assert reply(post(hec, [EVENT])) == (403, {"text": "Token disabled", "code": 1})


def test_hec_health(hec):
    response = requests.get(hec.url + "/services/collector/health", verify=hec.ca, timeout=5)
    assert reply(response) == (200, {"text": "HEC is healthy", "code": 17})


def test_hec_unknown_path_is_404(hec):
    assert post(hec, [EVENT], path="/services/collector/nope").status_code == 404


@pytest.mark.parametrize("path", ["/services/collector", "/services/collector/event/1.0"])
def test_hec_other_event_paths(hec, path):
    assert reply(post(hec, [EVENT], path=path))[1]["code"] == 0


# --- HEC: data checks -------------------------------------------------------


def test_hec_refuses_an_index_the_token_may_not_write(hec):
    hec.set_token(TOKEN, indexes={"scannedlog"})
    body = [EVENT, dict(EVENT, index="main")]
    assert reply(post(hec, body)) == (
        400, {"text": "Incorrect index", "code": 7, "invalid-event-number": 1})
    assert [e["index"] for e in hec.events] == ["scannedlog"], "the event before the bad one is kept"


def test_hec_refuses_a_json_array(hec):
    assert reply(post(hec, json.dumps([EVENT, EVENT]))) == (
        400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 0})


@pytest.mark.parametrize("body, expected", [
    ("", {"text": "No data", "code": 5}),
    ([EVENT, {"index": "x"}], {"text": "Event field is required", "code": 12,
                               "invalid-event-number": 1}),
    ([dict(EVENT, event="")], {"text": "Event field cannot be blank", "code": 13,
                               "invalid-event-number": 0}),
    ([dict(EVENT, fields={"a": {"b": "c"}})], {"text": "Error in handling indexed fields",
                                               "code": 15, "invalid-event-number": 0}),
    (json.dumps(EVENT) + "{broken", {"text": "Invalid data format", "code": 6,
                                     "invalid-event-number": 1}),
])
def test_hec_refuses_bad_data(hec, body, expected):
    assert reply(post(hec, body)) == (400, expected)
    assert len(hec.events) == expected.get("invalid-event-number", 0), "only the events before the bad one"


def test_hec_accepts_flat_fields(hec):
    assert post(hec, [dict(EVENT, fields={"a": "b", "c": ["d", "e"]})]).status_code == 200


def test_hec_bad_marker_rejects_the_whole_batch(hec):
    hec.partial_batches = False
    body = [EVENT, dict(EVENT, event="x " + hec.bad_marker), EVENT]
    assert reply(post(hec, body)) == (
        400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 1})
    assert hec.events == [] and hec.posts[0].events == 0


def test_hec_partial_batches_keep_the_events_before_the_bad_one(hec):
    body = [dict(EVENT, event="first"), dict(EVENT, event=hec.bad_marker), EVENT]
    assert reply(post(hec, body)) == (
        400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 1})
    assert [e["event"] for e in hec.events] == ["first"] and hec.posts[0].events == 1


def test_hec_accepts_gzip(hec):
    body = gzip.compress("".join(json.dumps(dict(EVENT, event=str(i))) for i in range(3)).encode())
    response = post(hec, body, headers={"Content-Encoding": "gzip"})
    assert reply(response) == (200, {"text": "Success", "code": 0})
    assert [e["event"] for e in hec.events] == ["0", "1", "2"]
    assert hec.posts[0].gzip and hec.posts[0].raw_size == len(body)


def test_hec_does_not_decode_deflate(hec):
    body = zlib.compress(json.dumps(EVENT).encode())
    response = post(hec, body, headers={"Content-Encoding": "deflate"})
    assert reply(response) == (400, {"text": "Invalid data format", "code": 6,
                                     "invalid-event-number": 0})


def test_hec_refuses_a_body_over_max_content_length(hec):
    hec.max_content_length = len(json.dumps(EVENT)) + 10
    assert post(hec, [dict(EVENT, event="x" * 200)]).status_code == 413
    assert post(hec, [EVENT]).status_code == 200  # the connection or a new one works


# --- HEC: failures and delays -----------------------------------------------


def test_hec_fail_next_503_with_retry_after(hec):
    hec.fail_next(1, retry_after=7)
    response = post(hec, [EVENT])
    assert reply(response) == (503, {"text": "Server is busy", "code": 9})
    assert response.headers["Retry-After"] == "7"
    assert hec.events == []
    assert post(hec, [EVENT]).status_code == 200 and len(hec.events) == 1


@pytest.mark.parametrize("status, body", [
    (500, {"text": "Internal server error", "code": 8}),
    (408, {"text": "Request Timeout"}),
    (429, {"text": "Too Many Requests"}),
    (501, {"text": "Not Implemented"}),
])
def test_hec_fail_next_other_statuses(hec, status, body):
    hec.fail_next(2, status=status)
    assert [reply(post(hec, [EVENT])) for _ in range(2)] == [(status, body)] * 2
    assert post(hec, [EVENT]).status_code == 200


def test_hec_delay_next_makes_the_client_time_out(hec):
    hec.delay_next(1, 0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(hec, [EVENT], timeout=0.1)
    # A slow Splunk still indexes what the client gave up on.
    assert wait_until(lambda: len(hec.events) == 1)


# --- HEC: acknowledgement ---------------------------------------------------


def poll_acks(hec, channel, ids, token=ACK_TOKEN) -> requests.Response:
    return post(hec, json.dumps({"acks": ids}), token=token, path="/services/collector/ack",
                headers={"X-Splunk-Request-Channel": channel})


def test_hec_ack_flow(hec):
    hec.ack_delay = 0.5
    channel = str(uuid.uuid4())
    headers = {"X-Splunk-Request-Channel": channel}
    replies = [reply(post(hec, [EVENT], token=ACK_TOKEN, headers=headers)) for _ in range(2)]
    assert replies == [(200, {"text": "Success", "code": 0, "ackId": n}) for n in (0, 1)]
    assert reply(poll_acks(hec, channel, [0, 1])) == (200, {"acks": {"0": False, "1": False}})
    assert wait_until(lambda: poll_acks(hec, channel, [0]).json()["acks"]["0"])
    assert poll_acks(hec, channel, [0]).json() == {"acks": {"0": False}}  # reported once
    assert wait_until(lambda: poll_acks(hec, channel, [1]).json()["acks"]["1"])
    assert poll_acks(hec, channel, [0, 1, 2]).json() == {"acks": {"0": False, "1": False,
                                                                  "2": False}}


def test_hec_ack_ids_count_per_channel_and_accept_query_channel(hec):
    for channel in (str(uuid.uuid4()), str(uuid.uuid4())):
        path = "/services/collector/event?channel=" + channel
        assert reply(post(hec, [EVENT], token=ACK_TOKEN, path=path))[1]["ackId"] == 0


@pytest.mark.parametrize("headers, expected", [
    ({}, {"text": "Data channel is missing", "code": 10}),
    ({"X-Splunk-Request-Channel": "not-a-guid"}, {"text": "Invalid data channel", "code": 11}),
])
def test_hec_ack_token_needs_a_guid_channel(hec, headers, expected):
    assert reply(post(hec, [EVENT], token=ACK_TOKEN, headers=headers)) == (400, expected)


def test_hec_ack_on_a_token_without_acks(hec):
    assert reply(poll_acks(hec, str(uuid.uuid4()), [0], token=TOKEN)) == (
        400, {"text": "ACK is disabled", "code": 14})


# --- HEC: connections and trust ---------------------------------------------


def test_hec_keep_alive_reuses_one_connection(hec):
    with requests.Session() as session:
        for _ in range(3):
            response = session.post(hec.event_url, data=json.dumps(EVENT), verify=hec.ca,
                                    headers={"Authorization": "Splunk " + TOKEN}, timeout=5)
            assert response.status_code == 200
    assert hec.connections == 1
    assert len({p.connection for p in hec.posts}) == 1
    post(hec, [EVENT])  # no session: a connection of its own
    assert hec.connections == 2 and hec.posts[-1].connection != hec.posts[0].connection


@pytest.mark.parametrize("make, reason", [
    (certs.expired, "certificate has expired"),
    (certs.unrelated, "unable to get local issuer certificate"),
])
def test_hec_records_refused_handshakes(tmp_path, make, reason):
    server_files, trusted = make(tmp_path), certs.ca_signed(tmp_path)
    # The expired certificate is its own CA; the unrelated leaf meets a client
    # trusting another CA.
    ca = server_files.ca if make is certs.expired else trusted.ca
    with HecServer(server_files.cert, server_files.key) as server:
        url = server.url + "/services/collector/health"
        with pytest.raises(requests.exceptions.SSLError, match=reason):
            requests.get(url, verify=ca, timeout=5)
        assert wait_until(lambda: len(server.handshake_errors) == 1)
        assert server.connections == 0
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, verify=ca, timeout=2)  # stopped


def test_no_ca_env_removes_ca_variables(no_ca_env):
    assert not {"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"} & set(os.environ)
