"""`siem_tool send` against real peers: rsyslog (UDP, TCP, TLS, QRadar's role) and the HEC test server."""
import collections
import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TOOL, Site, make_store, run_tool
from test_export import summary as export_summary
from tests.peers import certs
from tests.peers.hec import ACK_TOKEN, TOKEN

KINDS = ("scannedlog", "detectedlog", "assetinfo", "applicationinfo", "updateinfo")
SEND_LINE = re.compile(r"^(\w+): (\d+) records sent, (\d+) bytes, [\d.]+ s, (.+)$")


def sent_summary(result):
    found = {}
    for line in result.stdout.splitlines():
        match = SEND_LINE.match(line)
        assert match, f"unexpected output line: {line!r}"
        found[match.group(1)] = (int(match.group(2)), match.group(4))
    return found


def exported_lines(site):
    """Every record as LEEF, from the export of the same store: what must arrive."""
    result = site.run("export", "--log=all", "--format=leef", f"--output={site.folder / 'expected'}")
    assert result.returncode == 0, result.stderr
    lines = []
    for _kind, (_count, path) in export_summary(result).items():
        lines += path.read_text("utf-8").splitlines()
    return lines


def leef_of(line: bytes) -> str:
    text = line.decode("utf-8")
    return text[text.index("LEEF:2.0|"):]


def rsyslog_config(site, port, protocol, **extra):
    values = {"ServerAddress": "127.0.0.1", "ServerPort": port, "Protocol": protocol, "Timeout": 5}
    values.update(extra)
    return site.configure(sections={"RSyslog": values})


def test_rsyslog_header_and_priority(edge_site, rsyslog):
    rsyslog_config(edge_site, rsyslog.tcp_port, "TCP")
    start = rsyslog.mark()
    result = edge_site.run("send", "--siem=rsyslog", "--log=scannedlog")
    assert result.returncode == 0, result.stderr
    first = rsyslog.wait_for(302, start=start)[0].decode()
    # RFC 5424: <PRI>1 TIMESTAMP HOST TMPS3 - MSGID - then LEEF; local4 (20) + info = 166
    assert re.match(r"<166>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d \S+ TMPS3 - scannedlog - LEEF:2\.0\|", first)
    lines = rsyslog.received(start)
    sevs = {int(re.search(r"\tsev=(\d+)\t", leef_of(l)).group(1)): int(l[1:l.index(b">")]) for l in lines}
    for sev, pri in sevs.items():
        assert pri == 20 * 8 + {1: 6, 2: 6, 3: 5, 4: 5, 5: 4, 6: 4, 7: 3, 8: 3, 9: 2, 10: 1}[sev]


@pytest.mark.parametrize("protocol", ["UDP", "TCP", "TLS"])
def test_every_record_arrives_exactly_once(edge_site, rsyslog, protocol):
    expected = exported_lines(edge_site)
    port = {"UDP": rsyslog.udp_port, "TCP": rsyslog.tcp_port, "TLS": rsyslog.tls_port}[protocol]
    rsyslog_config(edge_site, port, protocol, CertFile=rsyslog.ca)
    start = rsyslog.mark()
    result = edge_site.run("send", "--siem=rsyslog", "--log=all")
    assert result.returncode == 0, result.stderr
    counts = sent_summary(result)
    assert sum(n for n, _ in counts.values()) == len(expected)
    received = rsyslog.wait_for(len(expected), start=start)
    assert collections.Counter(map(leef_of, received)) == collections.Counter(expected)
    assert all(b"\t" in line for line in received), "TABs arrive as TABs"
    # the local copy holds what was sent
    copies = sorted((edge_site.folder / "sent").glob("*.leef"))
    assert sum(len(p.read_text("utf-8").splitlines()) for p in copies) == len(expected)


def test_octet_counting_framing(site, rsyslog):
    rsyslog_config(site, rsyslog.tcp_port, "TCP", Framing="octet-counting")
    start = rsyslog.mark()
    result = site.run("send", "--siem=rsyslog", "--log=scannedlog")
    assert result.returncode == 0, result.stderr
    received = rsyslog.wait_for(302, start=start)
    assert len(received) == 302 and all(line.startswith(b"<") for line in received)


@pytest.mark.parametrize("protocol", ["UDP", "TCP"])
def test_over_long_messages_are_cut_and_counted(edge_site, rsyslog, protocol):
    port = rsyslog.udp_port if protocol == "UDP" else rsyslog.tcp_port
    rsyslog_config(edge_site, port, protocol, MaxMessageSize=900)
    start = rsyslog.mark()
    result = edge_site.run("send", "--siem=rsyslog", "--log=scannedlog")
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[0]
    cut = int(re.search(r", (\d+) cut to MaxMessageSize", line).group(1))
    received = rsyslog.wait_for(402, start=start)
    assert len(received) == 402
    marked = [r for r in received if re.search(rb" \[cut by siem_tool: \d+ bytes\]$", r)]
    assert len(marked) == cut > 0
    assert max(len(r) for r in received) <= 900
    for r in marked:
        r.decode("utf-8")  # cut on a character boundary


# --- QRadar: TLS with the pinned self-signed certificate --------------------

def qradar_config(site, port, cert_file, **extra):
    values = {"ServerAddress": "127.0.0.1", "ServerPort": port, "CertFile": cert_file, "Timeout": 3}
    values.update(extra)
    return site.configure(sections={"QRadar": values})


@pytest.fixture(scope="module")
def qradar_certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qradar-certs")
    return {"self_signed": certs.self_signed(folder), "expired": certs.expired(folder),
            "unrelated": certs.unrelated(folder)}


def test_qradar_by_ip_with_its_own_self_signed_certificate(site, rsyslog_factory, qradar_certs):
    qradar = qradar_certs["self_signed"]
    server = rsyslog_factory(qradar.cert, qradar.key)
    qradar_config(site, server.tls_port, qradar.cert)
    result = site.run("send", "--siem=qradar", "--log=all")
    assert result.returncode == 0, result.stderr
    total = sum(n for n, _ in sent_summary(result).values())
    received = server.wait_for(total)
    assert len(received) == total == len(exported_lines(site))
    # RFC 3164 header with this PC's address as the host, as QRadar's log source identifier
    assert re.match(rb"<166>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d 127\.0\.0\.1 LEEF:2\.0\|", received[0])


@pytest.mark.parametrize("served,message", [
    ("unrelated", "the server's certificate is neither in nor signed by CertFile"),
    ("expired", "the server's certificate has expired"),
])
def test_qradar_refuses_other_certificates(site, rsyslog_factory, qradar_certs, served, message):
    server = rsyslog_factory(qradar_certs[served].cert, qradar_certs[served].key)
    pinned = qradar_certs["self_signed"].cert if served != "expired" else qradar_certs["expired"].cert
    config = qradar_config(site, server.tls_port, pinned)
    before = config.read_bytes()
    result = site.run("send", "--siem=qradar", "--log=all")
    assert result.returncode == 4
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "checkpoint not moved" in result.stderr
    assert server.received() == []
    assert config.read_bytes() == before
    assert not (site.folder / "config.state.json").exists()


def test_qradar_refuses_a_plaintext_listener(site, rsyslog, qradar_certs):
    config = qradar_config(site, rsyslog.tcp_port, qradar_certs["self_signed"].cert)
    start = rsyslog.mark()
    result = site.run("send", "--siem=qradar", "--log=all")
    assert result.returncode == 4
    assert "is this a plain (non-TLS) syslog port?" in result.stderr and result.stderr.count("\n") == 1
    time.sleep(0.5)
    assert not any(b"LEEF:" in line for line in rsyslog.received(start)), "nothing is sent in clear text"
    assert b"Startdate =\r\n" in config.read_bytes()


def test_environment_never_widens_trust(site, rsyslog, qradar_certs):
    """REQUESTS_CA_BUNDLE / SSL_CERT_FILE name the server's CA; CertFile names another: refused."""
    qradar_config(site, rsyslog.tls_port, qradar_certs["self_signed"].cert)
    env = {"REQUESTS_CA_BUNDLE": rsyslog.ca, "SSL_CERT_FILE": rsyslog.ca, "CURL_CA_BUNDLE": rsyslog.ca}
    result = site.run("send", "--siem=qradar", "--log=scannedlog", env=env)
    assert result.returncode == 4, result.stdout


# --- Splunk HEC --------------------------------------------------------------

def splunk_config(site, hec, token=TOKEN, **extra):
    values = {"ServerAddress": "127.0.0.1", "ServerPort": hec.port, "Token": token, "CertFile": hec.ca,
              "RetrySeconds": 20, "Timeout": 5}
    values.update(extra)
    return site.configure(sections={"Splunk": values})


def epoch(local_text, zone):
    moment = dt.datetime.strptime(local_text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
    return moment.timestamp()


def test_hec_events_index_host_time(edge_site, hec):
    splunk_config(edge_site, hec)
    tokyo = dt.timezone(dt.timedelta(hours=9))
    result = edge_site.run("send", "--siem=splunk", "--log=all", env={"TZ": "Asia/Tokyo"})
    assert result.returncode == 0, result.stderr
    expected = exported_lines(edge_site)
    assert sorted(e["event"][e["event"].index(">") + 1:] for e in hec.events) == sorted(expected)
    scans = edge_site.sql("SELECT log_id, host_name, start_time FROM scan_log")
    by_log = {log_id: (host, start) for log_id, host, start in scans}
    for event in hec.events:
        assert event["source"] == "TMPS3" and event["sourcetype"] == "tmps3:leef"
        assert re.match(r"<\d+>LEEF:2\.0\|", event["event"])
        if event["index"] == "scannedlog":
            log_id = re.search(r"\tlogID=([^\t]*)", event["event"]).group(1)
            host, start = by_log[log_id]
            assert event.get("host") == (host or None)
            assert event["time"] == epoch(start, tokyo)
    assert collections.Counter(e["index"] for e in hec.events) == {
        k: n for k, (n, _) in sent_summary(result).items()}
    assert len(hec.posts) >= 1 and all(p.gzip for p in hec.posts)
    assert hec.connections == 1, "one keep-alive session for the whole run"
    channels = {p.headers.get("X-Splunk-Request-Channel") for p in hec.posts}
    assert len(channels) == 1 and re.fullmatch(r"[0-9a-f-]{36}", channels.pop())


def test_hec_batches_are_bounded_in_bytes(site, hec):
    splunk_config(site, hec, BatchBytes=20000)
    result = site.run("send", "--siem=splunk", "--log=all")
    assert result.returncode == 0, result.stderr
    assert len(hec.posts) > 10
    assert all(p.body_size <= 20000 for p in hec.posts if p.events > 1)
    assert max(p.body_size for p in hec.posts) > 15000, "batches are filled up to the bound"
    assert len(hec.events) == len(exported_lines(site))


def test_hec_bad_token(site, hec):
    config = splunk_config(site, hec, token="00000000-0000-0000-0000-000000000000")
    before = config.read_bytes()
    result = site.run("send", "--siem=splunk", "--log=all", "-d")
    assert result.returncode == 4
    assert result.stderr == ("siem_tool: error: Splunk HEC 127.0.0.1:%d: HEC refused the data with code 4 "
                             "\"Invalid token\"; the token is not known to Splunk; copy the right Token into "
                             "[Splunk]. checkpoint not moved; the next run sends the rest\n" % hec.port)
    assert config.read_bytes() == before and hec.events == []
    log = (site.folder / "debug_log_SIEM-tool.txt").read_text("utf-8")
    assert "00000000-0000-0000-0000-000000000000" not in log + result.stderr + result.stdout


def spread_import_times(site):
    """Every row of every table imported a second after the one before, as a busy site's are."""
    db = sqlite3.connect(site.store)
    for table in ("scan_log", "detection_log", "asset_info", "application_info", "update_info"):
        db.execute(f"UPDATE {table} SET imported_at = datetime('2024-01-01 00:00:00', '+' || id || ' seconds')")
    db.commit()
    db.close()


def store_counts(site):
    tables = dict(zip(KINDS, ("scan_log", "detection_log", "asset_info", "application_info", "update_info")))
    return {kind: site.sql(f"SELECT count(*) FROM {table}")[0][0] for kind, table in tables.items()}


def test_hec_unknown_index_stops_that_kind_only(site, hec):
    spread_import_times(site)
    hec.set_token("restricted-token", indexes={"scannedlog", "assetinfo"})
    config = splunk_config(site, hec, token="restricted-token")
    result = site.run("send", "--siem=splunk", "--log=all")
    assert result.returncode == 4
    assert 'code 7 "Incorrect index"' in result.stderr
    sent = sent_summary(result)
    assert sent["scannedlog"][0] == 302 and sent["assetinfo"][0] > 0
    assert sent["detectedlog"][0] == 0 and "not moved" in sent["detectedlog"][1]
    state = json.loads((site.folder / "config.state.json").read_text())["kinds"]
    assert {k for k, entry in state.items() if "id" in entry} == {"scannedlog", "assetinfo"}
    assert all(entry["since"] == "" for k, entry in state.items() if "id" not in entry), "held at the oldest"
    assert {e["index"] for e in hec.events} == {"scannedlog", "assetinfo"}
    # once the index exists, the next run sends the rest and only the rest: every detection,
    # application and update, also those imported before the Startdate the first run wrote
    hec.set_token("restricted-token")
    hec.reset()
    again = site.run("send", "--siem=splunk", "--log=all")
    assert again.returncode == 0, again.stderr
    assert sent_summary(again)["scannedlog"][0] == 0
    counts = collections.Counter(e["index"] for e in hec.events)
    assert counts == {k: n for k, n in store_counts(site).items() if k not in ("scannedlog", "assetinfo")}


@pytest.mark.parametrize("fault", ["connection", "partial-log"])
def test_kinds_not_sent_yet_lose_nothing_when_startdate_moves(site, rsyslog, plain_listener_factory, fault):
    """A run that stops after some kinds (a SIEM fault) or that sends only some (--log) moves
    Startdate; the kinds it did not send must still get every record next time."""
    spread_import_times(site)
    if fault == "connection":
        once = plain_listener_factory(accept=1)     # takes one connection, then the port is closed
        rsyslog_config(site, once.port, "TCP")
        first = site.run("send", "--siem=rsyslog", "--log=all")
        assert first.returncode == 4, first.stderr
    else:
        rsyslog_config(site, rsyslog.tcp_port, "TCP")
        first = site.run("send", "--siem=rsyslog", "--log=scannedlog")
        assert first.returncode == 0, first.stderr
    config = site.config.read_bytes()
    assert re.search(rb"Startdate = ?2024-", config), "Startdate moved"
    if fault == "connection":   # the server is back: point config.ini at it, Startdate as it is
        site.config.write_bytes(re.sub(rb"ServerPort = \d+", b"ServerPort = %d" % rsyslog.tcp_port, config))
    start = rsyslog.mark()
    again = site.run("send", "--siem=rsyslog", "--log=all")
    assert again.returncode == 0, again.stderr
    counts = {k: n for k, (n, _) in sent_summary(again).items()}
    expected = store_counts(site)
    for kind in KINDS[1:]:
        assert counts[kind] == expected[kind], kind
    rsyslog.wait_for(sum(counts.values()), start=start)


def test_hec_three_busy_answers_then_success(site, hec):
    splunk_config(site, hec)
    hec.fail_next(3, status=503, retry_after=1)
    started = time.monotonic()
    result = site.run("send", "--siem=splunk", "--log=scannedlog")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 3, "Retry-After: 1 honoured three times"
    assert len(hec.events) == 302
    assert len({e["event"] for e in hec.events}) == 302


def test_hec_gives_up_within_retry_seconds(site, hec):
    config = splunk_config(site, hec, RetrySeconds=2)
    before = config.read_bytes()
    hec.fail_next(100, status=503)
    started = time.monotonic()
    result = site.run("send", "--siem=splunk", "--log=scannedlog")
    assert result.returncode == 4 and time.monotonic() - started < 10
    assert "HEC answered HTTP 503 (Server is busy); gave up after" in result.stderr
    assert config.read_bytes() == before


def test_hec_bad_event_is_quarantined_and_neighbours_delivered(site, hec):
    db = sqlite3.connect(site.store)
    db.execute("UPDATE scan_log SET comment = 'HEC-TEST-BAD-EVENT' WHERE id = 50")
    db.commit()
    db.close()
    splunk_config(site, hec)
    result = site.run("send", "--siem=splunk", "--log=scannedlog")
    assert result.returncode == 6, result.stderr
    assert "1 records were refused by HEC and quarantined" in result.stderr
    assert len(hec.events) == 301
    assert not any("HEC-TEST-BAD-EVENT" in e["event"] for e in hec.events)
    assert len({e["event"] for e in hec.events}) == 301, "no neighbour sent twice"
    files = list((site.folder / "quarantine").glob("scannedlog_*.jsonl"))
    lines = files[0].read_text("utf-8").splitlines()
    assert "HEC-TEST-BAD-EVENT" in json.loads(lines[0])["event"]
    assert json.loads(lines[1])["hec_answer"]["code"] == 6
    assert TOKEN not in files[0].read_text("utf-8")
    assert "checkpoint id 302" in result.stdout


def test_hec_with_indexer_acknowledgement(site, hec):
    hec.ack_delay = 0.3
    splunk_config(site, hec, token=ACK_TOKEN, UseAck="yes")
    result = site.run("send", "--siem=splunk", "--log=scannedlog")
    assert result.returncode == 0, result.stderr
    assert len(hec.events) == 302
    assert any("/ack" in r.path for r in hec.requests)


def test_hec_acks_that_never_come(site, hec):
    hec.ack_delay = 3600
    config = splunk_config(site, hec, token=ACK_TOKEN, UseAck="yes", RetrySeconds=1)
    before = config.read_bytes()
    result = site.run("send", "--siem=splunk", "--log=scannedlog")
    assert result.returncode == 4
    assert "did not acknowledge" in result.stderr
    assert config.read_bytes() == before


# --- checkpoint ---------------------------------------------------------------

def test_appended_rows_are_sent_by_the_next_run_and_only_they(site, rsyslog):
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    first = site.run("send", "--siem=rsyslog", "--log=all")
    assert first.returncode == 0, first.stderr
    # endpoints whose clocks are years behind, imported later
    make_store(site.store, "--append", "--scans", 40, "--skew", 1.0, "--seed", 9, "--hosts", 5,
               "--imported-at", "2030-01-01 00:00:00")
    new = site.sql("SELECT count(*) FROM scan_log WHERE imported_at = '2030-01-01 00:00:00'")[0][0]
    old_times = site.sql("SELECT min(start_time) FROM scan_log WHERE imported_at = '2030-01-01 00:00:00'")[0][0]
    assert new == 40 and old_times < "2026-01-01"
    start = rsyslog.mark()
    second = site.run("send", "--siem=rsyslog", "--log=all")
    assert second.returncode == 0, second.stderr
    sent = sent_summary(second)
    assert sent["scannedlog"][0] == 40
    total = sum(n for n, _ in sent.values())
    received = rsyslog.wait_for(total, start=start)
    assert len(received) == total
    assert all(b"LEEF:" in r for r in received)
    expected_new = {
        table: site.sql(f"SELECT count(*) FROM {table} WHERE imported_at = '2030-01-01 00:00:00'")[0][0]
        for table in ("scan_log", "detection_log", "asset_info", "application_info", "update_info")}
    assert [n for n, _ in sent.values()] == list(expected_new.values())


def test_rows_imported_in_the_checkpoints_second_are_not_skipped(site, rsyslog):
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    assert site.run("send", "--siem=rsyslog", "--log=scannedlog").returncode == 0
    last_import = site.sql("SELECT max(imported_at) FROM scan_log")[0][0]
    make_store(site.store, "--append", "--scans", 5, "--seed", 3, "--imported-at", last_import)
    again = site.run("send", "--siem=rsyslog", "--log=scannedlog")
    assert sent_summary(again)["scannedlog"][0] == 5
    # without the state file, the Startdate in config.ini (same second) still covers them
    (site.folder / "config.state.json").unlink()
    make_store(site.store, "--append", "--scans", 3, "--seed", 4, "--imported-at", last_import)
    start = rsyslog.mark()
    fallback = site.run("send", "--siem=rsyslog", "--log=scannedlog")
    assert fallback.returncode == 0, fallback.stderr
    count = sent_summary(fallback)["scannedlog"][0]
    assert count == site.sql("SELECT count(*) FROM scan_log WHERE imported_at >= ?", (last_import,))[0][0]
    received = {leef_of(r) for r in rsyslog.wait_for(count, start=start)}
    newest = site.sql("SELECT log_id FROM scan_log ORDER BY id DESC LIMIT 3")
    assert all(any(log_id in r for r in received) for (log_id,) in newest)


def test_startdate_option_and_hand_edit_send_again(site, rsyslog):
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    assert site.run("send", "--siem=rsyslog", "--log=scannedlog").returncode == 0
    again = site.run("send", "--siem=rsyslog", "--log=scannedlog", "--startdate=2000-01-01 00:00:00")
    assert sent_summary(again)["scannedlog"][0] == 302
    site.config.write_bytes(re.sub(rb"Startdate =[^\r]*", b"Startdate =", site.config.read_bytes()))
    edited = site.run("send", "--siem=rsyslog", "--log=scannedlog")
    assert sent_summary(edited)["scannedlog"][0] == 302, "an emptied Startdate means: from the oldest log"
    assert sent_summary(site.run("send", "--siem=rsyslog", "--log=scannedlog"))["scannedlog"][0] == 0


NOTEPAD_CONFIG = ("\ufeff; 設定ファイル — TMPS3 SIEM ツール\r\n[General Setting]\r\n; 最後に送った時刻\r\n"
                  "STARTDATE = \r\nfacility=20\r\n;InstalledFolder = C:\\old\r\nInstalledFolder = Management Program\r\n"
                  "\r\n# RSyslog\r\n[RSyslog]\r\nserveraddress = 127.0.0.1\r\nSERVERPORT = {port}\r\nProtocol = tcp\r\n"
                  "Comment100% = 100%\r\n")


def test_config_changes_only_in_the_startdate_value(site, rsyslog):
    site.config.write_bytes(NOTEPAD_CONFIG.format(port=rsyslog.tcp_port).encode("utf-8"))
    before = site.config.read_bytes()
    result = site.run("send", "--siem=rsyslog", "--log=all")
    assert result.returncode == 0, result.stderr
    after = site.config.read_bytes()
    newest = site.sql("SELECT min(imported_at) FROM (SELECT max(imported_at) AS imported_at FROM scan_log)")[0][0]
    local = dt.datetime.strptime(newest, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc).astimezone()
    expected = before.replace(b"STARTDATE = \r\n", f"STARTDATE = {local:%Y-%m-%d %H:%M:%S}\r\n".encode())
    assert after == expected
    assert [p.name for p in site.folder.iterdir() if p.name.startswith("config.ini")] == ["config.ini"]


def test_two_runs_at_once_one_sends_the_other_exits_5(site, hec):
    splunk_config(site, hec)
    hec.delay_next(1, 3)
    first = subprocess.Popen([sys.executable, str(TOOL), "send", "--siem=splunk", "--log=scannedlog",
                              f"--config={site.config}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not hec.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    second = site.run("send", "--siem=splunk", "--log=scannedlog")
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 5
    assert second.stderr == (f"siem_tool: error: another siem_tool run is sending with {site.config}; this run "
                             f"sent nothing (the next scheduled run picks up its records)\n")
    assert len(hec.events) == 302


def test_kill_9_at_random_moments_loses_nothing(tmp_path, store_cache, rsyslog):
    """Kill the sender at random moments, run again: every record arrives, at most one batch twice."""
    import random
    source = store_cache("--scans", 2500, "--hosts", 200, "--apps", 40)
    site = Site(tmp_path / "kill", source)
    expected = collections.Counter(exported_lines(site))
    rng = random.Random(20261203)
    results = []
    # a whole send, timed, so that the kills land inside one however fast this machine is
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    started = time.monotonic()
    assert site.run("send", "--siem=rsyslog", "--log=all").returncode == 0
    whole = time.monotonic() - started
    for trial in range(10):
        for stale in ("config.state.json",):
            (site.folder / stale).unlink(missing_ok=True)
        rsyslog_config(site, rsyslog.tcp_port, "TCP")
        start = rsyslog.mark()
        victim = subprocess.Popen([sys.executable, str(TOOL), "send", "--siem=rsyslog", "--log=all",
                                   f"--config={site.config}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.4, 0.95) * whole)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        time.sleep(0.3)
        before_rerun = rsyslog.line_count() - start
        rerun = site.run("send", "--siem=rsyslog", "--log=all")
        assert rerun.returncode == 0, rerun.stderr
        received = collections.Counter(map(leef_of, rsyslog.wait_for(sum(expected.values()), start=start,
                                                                     timeout=60, settle=1.0)))
        missing = expected - received
        duplicated = sum((received - expected).values())
        results.append((trial, before_rerun, sum(missing.values()), duplicated))
        assert not missing, f"trial {trial}: {sum(missing.values())} records lost"
        assert duplicated <= 1000, f"trial {trial}: {duplicated} records sent twice (more than one batch)"
    print("kill -9 trials (trial, received before the rerun, lost, duplicated):", results)
    total = sum(expected.values())
    assert sum(1 for r in results if 0 < r[1] < total) >= 5, "most kills must land in the middle of a send"
