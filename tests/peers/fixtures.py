"""pytest fixtures for the real peers.

Use from conftest.py with ``pytest_plugins = ["tests.peers.fixtures"]`` (or
``from tests.peers.fixtures import *``). Every peer is stopped at teardown,
also when the test failed.

  hec_server       session: HecServer over HTTPS for 127.0.0.1/localhost;
                   ``.ca`` is the CA file to pass as ``verify=``
  hec              function: the same server, with default behaviour and empty
                   records before the test (use this one in tests)
  rsyslog          session: Rsyslog with a CA-signed cert for 127.0.0.1;
                   ``.ca`` is the CA; use ``start = rsyslog.mark()`` and
                   ``wait_for(n, start=start)`` to see only your test's lines,
                   and wait for everything you send (a line landing late is
                   counted by the next test's mark())
  rsyslog_factory  function: ``rsyslog_factory(cert, key, **kwargs)`` starts
                   a private Rsyslog (e.g. with a self-signed cert, or
                   max_message_size="8k")
  plain_listener_factory  function: ``plain_listener_factory(reset_after=None, reply=b"")``
  no_ca_env        function, not autouse: removes REQUESTS_CA_BUNDLE,
                   CURL_CA_BUNDLE and SSL_CERT_FILE from the environment
"""

from typing import Callable, Iterator, List

import pytest

from tests.peers import certs
from tests.peers.hec import HecServer
from tests.peers.rsyslog import PlainTcpListener, Rsyslog

__all__ = ["hec_server", "hec", "rsyslog", "rsyslog_factory", "plain_listener_factory",
           "no_ca_env"]

CA_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


@pytest.fixture(scope="session")
def hec_server(tmp_path_factory) -> Iterator[HecServer]:
    files = certs.ca_signed(tmp_path_factory.mktemp("hec"), ["127.0.0.1", "localhost"])
    with HecServer(files.cert, files.key, ca=files.ca) as server:
        yield server


@pytest.fixture
def hec(hec_server: HecServer) -> Iterator[HecServer]:
    hec_server.restore_defaults()
    yield hec_server
    hec_server.wait_idle()
    hec_server.restore_defaults()  # a failed test leaves no fail_next/delay queued


@pytest.fixture(scope="session")
def rsyslog(tmp_path_factory) -> Iterator[Rsyslog]:
    workdir = tmp_path_factory.mktemp("rsyslog")
    files = certs.ca_signed(workdir, ["127.0.0.1"])
    with Rsyslog(workdir, files.cert, files.key, ca=files.ca) as server:
        yield server


@pytest.fixture
def rsyslog_factory(tmp_path_factory) -> Iterator[Callable[..., Rsyslog]]:
    started: List[Rsyslog] = []

    def start(cert: str, key: str, **kwargs) -> Rsyslog:
        server = Rsyslog(tmp_path_factory.mktemp("rsyslog"), cert, key, **kwargs)
        started.append(server)  # before start(): stop() is safe on a failed start
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def plain_listener_factory() -> Iterator[Callable[..., PlainTcpListener]]:
    started: List[PlainTcpListener] = []

    def start(**kwargs) -> PlainTcpListener:
        listener = PlainTcpListener(**kwargs)
        started.append(listener)
        return listener.start()

    yield start
    for listener in started:
        listener.stop()


@pytest.fixture
def no_ca_env(monkeypatch) -> None:
    """Remove the CA variables that requests/OpenSSL read, for this test only."""
    for name in CA_ENV:
        monkeypatch.delenv(name, raising=False)
