"""Cases an outside tester found by attacking the tool with only README.md and the product:
each one failed before its fix (lost records, a leaked token, exit 1, a hang), and must not again."""
import os
import re
import socket
import sqlite3
import sys
import threading
import time

import pytest

import siem_tool as S
from conftest import Site
from tests.peers import certs
from tests.peers.hec import TOKEN
from test_send import qradar_config, rsyslog_config, sent_summary, splunk_config


def one_line_error(result, code):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


# --- the HEC token -----------------------------------------------------------

def test_a_token_line_indented_by_mistake_is_never_shown(site, hec):
    config = splunk_config(site, hec, ServerPort="x")     # a bad value, reported with its text
    text = config.read_bytes().replace(f"Token = {TOKEN}".encode(), f"\tToken = {TOKEN}".encode())
    config.write_bytes(text.replace(b"ServerPort = x", b"ServerPort = 99999"))
    result = site.run("send", "--siem=splunk", "--log=all", "-d")
    error = one_line_error(result, 2)
    assert "ServerPort" in error
    log = (site.folder / "debug_log_SIEM-tool.txt").read_text("utf-8")
    assert TOKEN not in result.stdout + result.stderr + log


def test_a_token_echoed_by_the_server_is_masked(site, hec):
    splunk_config(site, hec)
    hec.fail_next(1, status=403, code=3, text=f"Invalid authorization: Splunk {TOKEN}")
    result = site.run("send", "--siem=splunk", "--log=scannedlog", "-d")
    error = one_line_error(result, 4)
    assert "code 3" in error and "(the token)" in error
    log = (site.folder / "debug_log_SIEM-tool.txt").read_text("utf-8")
    assert TOKEN not in result.stdout + result.stderr + log


# --- answers that are not HEC's ------------------------------------------------

@pytest.mark.parametrize("status,raw,message", [
    (200, b"<html>Welcome to nginx</html>", "not an HTTP Event Collector"),
    (400, b'{"code":6,"invalid-event-number":"x"}', 'code 6'),
    (403, b'{"code":[4]}', "not an HTTP Event Collector"),
    (403, b'{"code":4,"text":"a\\nb\\r\\nc"}', 'code 4 "a\u240ab\u240d\u240ac"'),
])
def test_answers_that_are_no_hec_success_deliver_nothing(site, hec, status, raw, message):
    config = splunk_config(site, hec)
    before = config.read_bytes()
    hec.fail_next(1, status=status, raw=raw)
    result = site.run("send", "--siem=splunk", "--log=scannedlog")
    assert message in one_line_error(result, 4)
    assert "checkpoint not moved" in result.stderr
    assert config.read_bytes() == before


# --- the local copy ------------------------------------------------------------

@pytest.mark.parametrize("where", ["a file", "/proc"])
def test_a_folder_that_cannot_take_the_local_copy_stops_before_sending(site, rsyslog, tmp_path, where):
    """/proc: a folder that exists but takes no file, even for root (as a full or read-only disk)."""
    if where == "/proc" and not os.path.isdir("/proc"):
        pytest.skip("no /proc here")
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    start = rsyslog.mark()
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    output = blocker if where == "a file" else where
    result = site.run("send", "--siem=rsyslog", "--log=all", f"--output={output}")
    one_line_error(result, 2)
    time.sleep(0.3)
    assert rsyslog.received(start) == [], "nothing sent that the copy could not keep"


# --- a server that never finishes ------------------------------------------------

class Trickler:
    """Reads what it is sent, answers one byte a second and never closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            conn.settimeout(0.1)
            while not self.stop.is_set():
                try:
                    conn.recv(65536)
                except socket.timeout:
                    pass
                except OSError:
                    break
                try:
                    conn.send(b".")
                except OSError:
                    break
                self.stop.wait(1)
            conn.close()


def test_a_trickling_server_cannot_hold_the_run_past_timeout(site):
    trickler = Trickler()
    try:
        rsyslog_config(site, trickler.port, "TCP", Timeout=2)
        started = time.monotonic()
        result = site.run("send", "--siem=rsyslog", "--log=scannedlog", timeout=60)
        assert time.monotonic() - started < 20
        assert "Timeout (2 s)" in one_line_error(result, 4)
    finally:
        trickler.stop.set()


# --- the store -------------------------------------------------------------------

def test_ids_of_zero_and_below_are_exported_and_sent(site, rsyslog):
    db = sqlite3.connect(site.store)
    db.row_factory = sqlite3.Row
    first = dict(db.execute("SELECT * FROM scan_log WHERE id = 1").fetchone())
    for new_id in (0, -7):
        row = dict(first, id=new_id, log_id=f"{first['log_id']}{new_id}")
        db.execute(f"INSERT INTO scan_log ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    db.commit()
    db.close()
    total = site.sql("SELECT count(*) FROM scan_log")[0][0]
    exported = site.run("export", "--log=scannedlog", "--format=csv")
    assert exported.returncode == 0 and f"scannedlog: {total} records" in exported.stdout
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    sent = site.run("send", "--siem=rsyslog", "--log=scannedlog")
    assert sent_summary(sent)["scannedlog"][0] == total


def test_ids_that_are_not_the_integer_primary_key_are_a_store_error(tmp_path):
    folder = tmp_path / "site"
    store = folder / "Management Program" / "Data" / "tmps3log.db"
    store.parent.mkdir(parents=True)
    db = sqlite3.connect(store)
    columns = sorted(S.required_columns(S.KIND_SPECS["scannedlog"])["scan_log"] - {"id"})
    db.execute(f"CREATE TABLE scan_log (id TEXT, {', '.join(columns)})")
    db.execute("INSERT INTO scan_log (id, imported_at) VALUES ('a', '2020-01-01 00:00:00')")
    db.commit()
    db.close()
    from conftest import run_tool, write_config
    config = write_config(folder)
    result = run_tool("export", "--log=scannedlog", "--format=leef", "--config", config)
    assert "id is not the INTEGER PRIMARY KEY" in one_line_error(result, 3)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Connection.setlimit is Python 3.11+")
def test_a_page_longer_than_sqlite_can_join_is_read_row_by_row(edge_site):
    """SQLite joins a page in one text of at most SQLITE_LIMIT_LENGTH (1 GB): lowered here, so
    that the edge store's pages overflow it, the export must give the same bytes."""
    class SmallLimitStore(S.Store):
        def connection(self):
            db = super().connection()
            db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 200_000)
            return db
    for style in (S.LeefStyle("\t", "MMM dd yyyy HH:mm:ss"), None):
        texts = []
        for store_class in (S.Store, SmallLimitStore):
            with store_class(str(edge_site.store)) as store:
                reader = S.KindReader(store, S.KIND_SPECS["scannedlog"], S.DEFAULT_SEVERITY, style)
                texts.append(b"".join(text for _count, text in reader.pages()))
        assert texts[0] == texts[1] and texts[0].count(b"\n") == 402


# --- config and command line -------------------------------------------------------

@pytest.mark.parametrize("value", ["+24:00", "+23:99", "-25:00"])
def test_impossible_time_zones_are_config_errors(site, hec, value):
    splunk_config(site, hec, TimeZone=value)
    assert "TimeZone" in one_line_error(site.run("send", "--siem=splunk", "--log=scannedlog"), 2)


def test_date_range_to_the_last_day_of_the_calendar(site):
    result = site.run("export", "--log=scannedlog", "--format=csv", "--date", "01012000", "31129999")
    assert result.returncode == 0, result.stderr
    assert re.search(r"scannedlog: \d+ records", result.stdout)


@pytest.mark.parametrize("option", ["--hostname=", "--hostname= ", "--ip=", "--netmask="])
def test_empty_filters_are_usage_errors_not_silently_off(site, option):
    one_line_error(site.run("export", "--log=all", "--format=csv", option), 2)


# --- certificates ---------------------------------------------------------------------

def test_a_damaged_certfile_is_a_config_error(site, tmp_path):
    damaged = tmp_path / "damaged.pem"
    damaged.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    qradar_config(site, 6514, damaged)
    for command in (("send", "--siem=qradar", "--log=all"), ("check", "--siem=qradar")):
        assert "CertFile" in one_line_error(site.run(*command), 2)


def test_exactly_the_servers_ca_issued_certificate_in_certfile_is_trusted(site, rsyslog_factory, tmp_path):
    """README: without TLSServerName the certificate must carry ServerAddress and chain to
    CertFile, or be exactly a certificate in CertFile, also one a CA issued for another name."""
    for folder in ("served", "other"):
        (tmp_path / folder).mkdir()
    served = certs.ca_signed(tmp_path / "served", ["other.example.invalid"])
    leaf_only = tmp_path / "leaf.pem"
    leaf_only.write_bytes(open(served.cert, "rb").read().split(b"-----END CERTIFICATE-----")[0]
                          + b"-----END CERTIFICATE-----\n")
    server = rsyslog_factory(served.cert, served.key)
    qradar_config(site, server.tls_port, leaf_only)
    result = site.run("send", "--siem=qradar", "--log=scannedlog")
    assert result.returncode == 0, result.stderr
    assert len(server.wait_for(302)) == 302
    other = certs.ca_signed(tmp_path / "other", ["other.example.invalid"])
    qradar_config(site, server.tls_port, other.cert)
    assert "neither in nor signed by" in one_line_error(site.run("send", "--siem=qradar", "--log=scannedlog"), 4)


# --- found by a new user following README -----------------------------------------------

@pytest.mark.parametrize("siem", ["qradar", "splunk"])
def test_check_with_nothing_listening_on_a_tls_port(site, hec, siem, tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    if siem == "qradar":
        qradar_config(site, port, hec.ca)
    else:
        splunk_config(site, hec, ServerPort=port)
    result = site.run("check", f"--siem={siem}")
    assert "connection refused" in one_line_error(result, 4)
    assert "verification FAILED: connection refused" in result.stdout


def test_date_written_with_an_equals_sign(site):
    result = site.run("export", "--log=all", "--format=csv", "--date=01012020", "02012020")
    assert "--date <from> <to>" in one_line_error(result, 2)


@pytest.mark.parametrize("section,typo,known", [
    ("RSyslog", "Protocl", "Protocol"), ("Splunk", "ServerAdress", "ServerAddress"),
    ("General Setting", "Event100", "Event100")])
def test_a_misspelled_key_is_named_not_ignored(site, section, typo, known):
    """'Protocl = TLS' quietly left at its default would send in clear text over UDP."""
    sections = {"RSyslog": {"ServerAddress": "127.0.0.1"}}
    if section == "General Setting":
        site.configure(general={typo: "5"}, sections=sections)
    else:
        sections.setdefault(section, {"ServerAddress": "127.0.0.1"})[typo] = "TLS"
        site.configure(sections=sections)
    error = one_line_error(site.run("check", "--siem=rsyslog"), 2)
    assert f"[{section}] {typo.lower()}: not a key siem_tool knows; did you mean {known}" in error


def test_a_missing_package_is_one_line(site):
    """-S: Python without its site-packages, as on a PC where pip was never run."""
    import subprocess
    from conftest import TOOL
    result = subprocess.run([sys.executable, "-S", str(TOOL), "-v"], capture_output=True, text=True)
    assert "docopt-ng is missing" in one_line_error(result, 2)


def test_startdate_write_back_keeps_every_other_byte_of_a_shift_jis_file(site, rsyslog):
    """Shift_JIS gives some characters two codes (NEC and IBM rows): decoding and encoding the
    whole file again would swap the editor's bytes for others."""
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    lines = site.config.read_bytes().decode("utf-8-sig").replace("\r\n", "\n").split("\n")
    text = "; ＴＭＰＳ３の設定 \n".encode("cp932") + b"; \x87\x90\x87\x9a\xee\xf9\n" + "\n".join(lines).encode("cp932")
    site.config.write_bytes(text)
    assert site.run("send", "--siem=rsyslog", "--log=all").returncode == 0
    after = site.config.read_bytes()
    value = re.search(rb"Startdate =(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\n", after).group(1)
    assert after == text.replace(b"Startdate =\n", b"Startdate =" + value + b"\n")


def test_a_held_kind_with_nothing_to_send_runs_through(site, rsyslog):
    """A kind held where Startdate stood (not sent by an earlier run) that has no records now."""
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    assert site.run("send", "--siem=rsyslog", "--log=scannedlog").returncode == 0
    db = sqlite3.connect(site.store)
    db.execute("DELETE FROM update_info")
    db.commit()
    db.close()
    result = site.run("send", "--siem=rsyslog", "--log=all")
    assert result.returncode == 0, result.stderr
    assert sent_summary(result)["updateinfo"][0] == 0
