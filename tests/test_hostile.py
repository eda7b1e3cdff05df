"""HEADER PLACEHOLDER"""
import calendar
import collections
import contextlib
import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import GOLDEN, ROOT, SHARED, TOOL, Site
from test_export import summary as export_summary
from test_send import qradar_config, rsyslog_config, splunk_config
from tests.peers import certs
from tests.peers.hec import TOKEN

KINDS = ("scannedlog", "detectedlog", "assetinfo", "applicationinfo", "updateinfo")
TABLES = dict(zip(KINDS, ("scan_log", "detection_log", "asset_info", "application_info", "update_info")))
SEND_LINE = re.compile(r"^(\w+): (\d+) records sent, (\d+) bytes, [\d.]+ s, (.+)$")
CUT_MARK = re.compile(rb" \[cut by siem_tool: (\d+) bytes\]$")
SYSLOG_SEVERITY = {1: 6, 2: 6, 3: 5, 4: 5, 5: 4, 6: 4, 7: 3, 8: 3, 9: 2, 10: 1}   # SPEC section 5
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
PATTERN = "MMM dd yyyy HH:mm:ss"


# --- small helpers -----------------------------------------------------------

def sends(result):
    """{kind: (records sent, rest of the line)} from send's summary lines (other lines ignored)."""
    found = {}
    for line in result.stdout.splitlines():
        match = SEND_LINE.match(line)
        if match:
            found[match.group(1)] = (int(match.group(2)), match.group(4))
    return found


def total_sent(result):
    return sum(n for n, _ in sends(result).values())


def cut_count(result):
    return sum(int(m.group(1)) for m in re.finditer(r", (\d+) cut to MaxMessageSize", result.stdout))


def one_line(result, code, *phrases):
    """Exit code, exactly one line on stderr starting 'siem_tool: error: ', containing each phrase."""
    assert result.returncode == code, (result.returncode, result.stdout[-500:], result.stderr[-700:])
    assert result.stderr.startswith("siem_tool: error: "), result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, f"{phrase!r} not in {result.stderr!r}"


def read_only(store):
    """The store opened read-only by a URI that survives % # ? and spaces in its path."""
    import urllib.request
    return sqlite3.connect("file:" + urllib.request.pathname2url(str(store)) + "?mode=ro", uri=True)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_keys(config, section, **values):
    """Change (or add) keys of one section in place; everything else, Startdate included, stays."""
    data = Path(config).read_bytes()
    bom = b"\xef\xbb\xbf" if data.startswith(b"\xef\xbb\xbf") else b""
    lines = data[len(bom):].decode("utf-8").split("\r\n")
    current, todo, out = None, {k.lower(): (k, v) for k, v in values.items()}, []
    for line in lines:
        header = re.match(r"\s*\[([^\]]*)\]", line)
        if header:
            if current == section.lower():
                out += [f"{k} = {v}" for k, v in todo.values()]
                todo = {}
            current = header.group(1).strip().lower()
        elif current == section.lower():
            key = line.split("=", 1)[0].strip().lower()
            if "=" in line and key in todo:
                line = f"{todo[key][0]} = {todo.pop(key)[1]}"
        out.append(line)
    if current == section.lower() and todo:
        out[-1:-1] = [f"{k} = {v}" for k, v in todo.values()]
    Path(config).write_bytes(bom + "\r\n".join(out).encode("utf-8"))


def startdate_of(config):
    text = Path(config).read_bytes().decode("utf-8-sig")
    return re.search(r"(?im)^\s*startdate\s*=[ \t]*(.*?)\s*$", text).group(1)


def state_of(site):
    path = site.folder / "config.state.json"
    return json.loads(path.read_text("utf-8"))["kinds"] if path.exists() else {}


def untouched(site):
    """What must not change when a run stops: config.ini, the state file, the store (bytes)."""
    state = site.folder / "config.state.json"
    return (site.config.read_bytes(), state.read_bytes() if state.exists() else None,
            sha256(site.store) if site.store.exists() else None)


def no_token_anywhere(site, *results, token=TOKEN):
    """The HEC token is in config.ini and nowhere else: not on screen, not in any file the tool wrote."""
    for result in results:
        assert token not in result.stdout and token not in result.stderr
    for path in site.folder.rglob("*"):
        if path.is_file() and path != site.config and path.suffix != ".db":
            assert token.encode() not in path.read_bytes(), f"the HEC token is in {path}"


# --- the independent oracle: SPEC section 4, from the store's own bytes ----------

def golden_keys(kind):
    line = (GOLDEN / f"{kind}.leef").read_text("utf-8").splitlines()[0]
    return [a.split("=", 1)[0] for a in line.split("|", 6)[6].split("\t")]


def column_of(key):
    """camelCase LEEF key -> snake_case column (schema.sql: one column per key of the guide)."""
    if key == "devTime":
        return "start_time"
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", key).lower()


_SQLITE = sqlite3.connect(":memory:")


def text_of(value):
    """What a stored value reads as: text and blobs as UTF-8 (bad bytes -> U+FFFD), an integer in
    decimal, a real as SQLite writes it."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float):
        return _SQLITE.execute("SELECT CAST(? AS TEXT)", (value,)).fetchone()[0]
    return str(value)


def cleaned(text, delimiter="\t"):
    """SPEC section 4: C0 -> control pictures, DEL -> U+2421, C1/U+2028/U+2029 -> U+FFFD, a printable
    delimiter -> its full-width twin."""
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20:
            out.append(chr(0x2400 + o))
        elif o == 0x7F:
            out.append("\u2421")
        elif 0x80 <= o < 0xA0 or ch in "\u2028\u2029":
            out.append("\ufffd")
        elif delimiter != "\t" and ch == delimiter:
            out.append(chr(o + 0xFEE0))
        else:
            out.append(ch)
    return "".join(out)


TIME_TEXT = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)")


def store_time(value):
    """The datetime of a stored endpoint time, or None when it is not 'YYYY-MM-DD HH:MM:SS'."""
    match = TIME_TEXT.fullmatch(text_of(value)) if isinstance(value, bytes) else None
    if not match:
        return None
    try:
        return dt.datetime(*map(int, match.groups()))
    except ValueError:
        return None


def leef_time(t):
    return f"{MONTHS[t.month - 1]} {t.day:02d} {t.year:04d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"


def whole_number(value):
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        with contextlib.suppress(ValueError):
            return int(text_of(value).strip())
    return None


def scan_event(status, infected, fixed):
    status, infected, fixed = text_of(status), whole_number(infected), whole_number(fixed)
    if status == "Scan canceled":
        return 1003
    if status == "Scan suspended":
        return 1004
    if infected == 0:
        return 1000
    if infected is not None and fixed is not None and fixed >= infected > 0:
        return 1001
    return 1002   # threats left, or counts nobody can read: the loud answer


RESULTS = ("Fixed", "Unable to fix", "Fixed at restart", "Ignored")


def detection_event(risk, result):
    risk, result = whole_number(risk), text_of(result) if isinstance(result, bytes) else None
    if risk not in (0, 1, 2) or result not in RESULTS:
        return 2009   # SPEC: missing or unknown -> high risk, unable to fix
    return 2000 + 4 * risk + RESULTS.index(result)


def severity(event):
    if event < 2000:
        return {1000: 2, 1001: 4, 1002: 7, 1003: 3, 1004: 3}[event]
    if event == 3000:
        return 2
    risk, r = divmod(event - 2000, 4)
    return (2, 6 + risk, 4 + risk, 5 + risk)[r]


def oracle(store, delimiter="\t"):
    """Every record of the store as SPEC says it must look: {kind: [dict(leef, csv, host, time, sev, imported_at)]}."""
    db = read_only(store)
    db.text_factory = bytes
    db.row_factory = sqlite3.Row
    try:
        rows = {t: db.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES.values()}
    finally:
        db.close()
    scans = {r["log_id"]: r for r in rows["scan_log"]}
    assets = {r["id"]: r for r in rows["asset_info"]}
    out = {}
    for kind in KINDS:
        keys, table = golden_keys(kind), TABLES[kind]
        records = []
        for row in rows[table]:
            if kind == "scannedlog":
                sources, event = [row], scan_event(row["scanned_status"], row["infected_files"], row["fixed_files"])
                host, when = row["host_name"], row["start_time"]
            elif kind == "detectedlog":
                scan = scans.get(row["log_id"])
                sources, event = [row, scan], detection_event(row["threat_risk"], row["taken_act_result"])
                host, when = (scan["host_name"], scan["start_time"]) if scan else (None, None)
            else:
                asset = row if kind == "assetinfo" else assets.get(row["asset_id"])
                sources, event = [row], 3000
                host, when = (asset["host_name"], asset["collected_at"]) if asset else (None, None)
            records.append(render_oracle(keys, sources, event, delimiter, host, when, row))
        out[kind] = records
    return out


FORMULA = ("=", "+", "-", "@", "\t", "\r")     # SPEC section 4, CSV
PLAIN_NUMBER = re.compile(r"[-+](?:[0-9][0-9.]*(?:e[-+]?[0-9]+)?|Inf)", re.I)  # a signed number, as SQLite writes it (-1.5e+18, -Inf), is no formula (OWASP)


def render_oracle(keys, sources, event, delimiter, host, when, row):
    sev = severity(event)
    attributes, cells = [], []
    for key in keys:
        if key == "devTimeFormat":
            attributes.append(f"{key}={PATTERN}")
            continue
        if key in ("sev", "eventId"):
            text = str(sev if key == "sev" else event)
            attributes.append(f"{key}={text}")
            cells.append(text)
            continue
        column = column_of(key)
        source = next((s for s in sources if s is not None and column in s.keys()), None)
        assert source is not None or len(sources) > 1, f"no column {column} for {key}"
        value = source[column] if source is not None else None
        moment = store_time(value) if key in ("devTime", "startTime", "endTime") else None
        raw = text_of(value)
        attributes.append(f"{key}={leef_time(moment) if moment else cleaned(raw, delimiter)}")
        cell = moment.strftime("%Y-%m-%d %H:%M:%S") if moment else cleaned(raw)
        if isinstance(value, bytes) and raw.startswith(FORMULA) and not PLAIN_NUMBER.fullmatch(raw):
            cell = "'" + cell   # SPEC/OWASP: a cell a spreadsheet would run as a formula
        cells.append(cell)
    header = f"LEEF:2.0|TrendMicro|PortableSecurity|3.0|{event}|x{ord(delimiter):02X}|"
    return dict(leef=header + delimiter.join(attributes), csv=cells, sev=sev,
                host=cleaned(text_of(host)) or None, time=store_time(when),
                imported_at=text_of(row["imported_at"]))


# --- a store full of what compromised endpoints write -----------------------------

class Raw(bytes):
    """Bytes stored as TEXT (CAST(x'..' AS TEXT)): invalid UTF-8 from a buggy or hostile endpoint."""


C0 = "".join(map(chr, range(0x20))) + "\x7f"
C1 = "".join(map(chr, range(0x80, 0xA0)))
FORGED_LEEF = ("LEEF:2.0|TrendMicro|PortableSecurity|3.0|1000|x09|devTime=Jan 01 2020 00:00:00\tsev=1\t"
               "eventId=1000\tlogID={FORGED}")
HOSTILE = [
    "CR\rLF\nCRLF\r\nTAB\tNUL\x00end",
    "c0:" + C0,
    "c1:" + C1,
    "nel\u0085ls\u2028ps\u2029end",
    "ok\n" + FORGED_LEEF,
    "\r\n<13>1 2026-01-01T00:00:00.000Z evil TMPS3 - scannedlog - " + FORGED_LEEF + "\n",
    "10 <13>octet\x00counted",
    "pipe|equals=back\\slash\"double'single",
    "^caret^and|bar|",
    "=HYPERLINK(\"http://example.invalid\",\"x\")",
    "+1+cmd|' /C calc'!A0",
    "-2-1",
    "@SUM(A1:A9)",
    "\t=tab first",
    "\r=cr first",
    "製造ライン　検査データ／山田太郎",
    Raw(b"bad\xffutf8\xfe"),
    Raw(b"\xc3"),
    Raw(b"\xed\xa0\x80surrogate"),
    Raw(b"\xc0\xafoverlong\x00nul"),
    Raw(b"=\xf4\x90\x80\x80big"),
    b"\x00\xffblob\n",
    None,
    "",
    " ",
    "lots",
    "2020-02-30 10:00:00",
    "yesterday",
    9223372036854775807,
    -9223372036854775808,
    1.5,
]
BIG_ASCII = "A" * 65536
BIG_JAPANESE = "".join(("日本語の長い値" * 10)[:69] + ("\n", "\t", "\x00")[i % 3] for i in range(21845 // 70 + 1))[:21846]
BIG_COLUMN = {"scan_log": "host_name", "detection_log": "threat_name", "asset_info": "host_name",
              "application_info": "name", "update_info": "name"}
NOT_NULL = {"imported_at", "log_id", "host_id", "asset_id"}
HOSTILE_IMPORT = "2029-12-31 23:59:59"


def sql_value(value):
    if isinstance(value, Raw):
        return f"CAST(x'{value.hex()}' AS TEXT)", []
    return "?", [value]


def insert_row(db, table, values):
    exprs, params = [], []
    for value in values.values():
        expr, more = sql_value(value)
        exprs.append(expr)
        params += more
    cursor = db.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join(exprs)})", params)
    return cursor.lastrowid


def unique_log_id(value, n):
    if isinstance(value, Raw):
        return Raw(bytes(value) + b" #%d" % n)
    return (value if isinstance(value, str) else "") + f" #{n}"


def add_hostile_rows(store):
    """Append, to every table: a row per hostile value in every column (cycled), a row with NULL in
    every column that may be NULL, orphans (a detection without its scan, inventories without their
    asset), rows with 64 KB values, and one whose import time does not parse."""
    db = sqlite3.connect(store)
    columns = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})") if r[1] != "id"] for t in TABLES.values()}
    base_scan = db.execute("SELECT log_id FROM scan_log ORDER BY id LIMIT 1").fetchone()[0]
    n = len(HOSTILE)

    def row(table, i, **fixed):
        values = {}
        for j, column in enumerate(columns[table]):
            value = HOSTILE[(i + j) % n]
            values[column] = "" if value is None and column in NOT_NULL else value
        values["imported_at"] = HOSTILE_IMPORT if i != n // 2 else "not a time"
        values.update(fixed)
        return values

    scan_ids = [unique_log_id(HOSTILE[i % n], i) for i in range(n)]
    for i in range(n):
        insert_row(db, "scan_log", row("scan_log", i, log_id=scan_ids[i]))
    null_scan = "{ALL-NULL}"
    insert_row(db, "scan_log", {"imported_at": HOSTILE_IMPORT, "log_id": null_scan})
    for i in range(n):
        insert_row(db, "detection_log", row("detection_log", i, log_id=scan_ids[i]))
    insert_row(db, "detection_log", {"imported_at": HOSTILE_IMPORT, "log_id": null_scan})
    insert_row(db, "detection_log", {"imported_at": HOSTILE_IMPORT, "log_id": "{ORPHAN: no such scan}"})
    asset_ids = [insert_row(db, "asset_info", row("asset_info", i)) for i in range(n)]
    null_asset = insert_row(db, "asset_info", {"imported_at": HOSTILE_IMPORT, "host_id": ""})
    for table in ("application_info", "update_info"):
        for i in range(n):
            insert_row(db, table, row(table, i, asset_id=asset_ids[i]))
        insert_row(db, table, {"imported_at": HOSTILE_IMPORT, "asset_id": null_asset, "host_id": ""})
        insert_row(db, table, {"imported_at": HOSTILE_IMPORT, "asset_id": 999999999, "host_id": 1})
    for table in TABLES.values():
        last = columns[table][-1]
        for k, (column, big) in enumerate(((last, BIG_ASCII), (BIG_COLUMN[table], BIG_JAPANESE))):
            fixed = {"imported_at": HOSTILE_IMPORT, column: big}
            fixed.update({"scan_log": {"log_id": f"{{BIG-{k}}}"}, "detection_log": {"log_id": base_scan},
                          "asset_info": {"host_id": 7}}.get(table, {"asset_id": asset_ids[0], "host_id": 7}))
            insert_row(db, table, fixed)
    db.commit()
    db.close()
    return store


@pytest.fixture(scope="module")
def hostile_source(store_cache, tmp_path_factory):
    """A store from make_store (guide records, --edge values) with the hostile rows appended."""
    path = tmp_path_factory.mktemp("hostile") / "tmps3log.db"
    shutil.copyfile(store_cache("--scans", 20, "--hosts", 4, "--apps", 3, "--updates", 2, "--edge"), path)
    return add_hostile_rows(path)


@pytest.fixture
def hostile_site(tmp_path, hostile_source):
    return Site(tmp_path / "site", hostile_source)


def first_difference(got, want):
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            at = next((k for k, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            return f"record {i}: got {g[max(0, at - 60):at + 60]!r}, SPEC wants {w[max(0, at - 60):at + 60]!r}"
    return f"{len(got)} records, SPEC wants {len(want)}"


# --- 1. values -------------------------------------------------------------------

@pytest.mark.parametrize("delimiter", ["\t", "^", "|"], ids=["x09", "x5E", "x7C"])
def test_hostile_values_render_exactly(hostile_site, delimiter):
    """Every record of the hostile store, LEEF and CSV, equals what SPEC section 4 makes of its bytes."""
    hostile_site.configure(general={"LeefDelimiter": f"x{ord(delimiter):02X}"})
    want = oracle(hostile_site.store, delimiter)
    result = hostile_site.run("export", "--log=all", "--format=leef")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for kind, (count, path) in export_summary(result).items():
        lines = path.read_bytes().decode("utf-8").split("\n")
        assert lines.pop() == "", "every record ends in LF"
        assert count == len(lines) == len(want[kind])
        expected = [r["leef"] for r in want[kind]]
        assert lines == expected, f"{kind}: {first_difference(lines, expected)}"
        for line in lines:
            attributes = line.split("|", 6)[6].split(delimiter)
            assert [a.split("=", 1)[0] for a in attributes] == golden_keys(kind), "no attribute split or forged"
    if delimiter != "\t":
        return
    result = hostile_site.run("export", "--log=all", "--format=csv")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for kind, (count, path) in export_summary(result).items():
        raw = path.read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") and raw.count(b"\r\n") == count + 1
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        assert rows[0] == [k for k in golden_keys(kind) if k != "devTimeFormat"]
        expected = [r["csv"] for r in want[kind]]
        assert rows[1:] == expected, f"{kind}: {first_difference(rows[1:], expected)}"


# --- what arrived, record by record ----------------------------------------------

RFC5424 = re.compile(rb"<(\d{1,3})>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(?:Z|[+-]\d\d:\d\d) \S+ TMPS3 - (\w+) - ")
RFC3164 = re.compile(rb"<(\d{1,3})>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d 127\.0\.0\.1 ()")


def expected_records(site, delimiter="\t"):
    """[(kind, record)] in export order: the LEEF export of the store (the tool's own), each line
    checked against the oracle, which adds what a line does not show (sev, host, time)."""
    result = site.run("export", "--log=all", "--format=leef", f"--output={site.folder / 'expected'}")
    assert result.returncode == 0, result.stderr
    want, out = oracle(site.store, delimiter), []
    for kind, (_count, path) in export_summary(result).items():
        lines = path.read_text("utf-8").splitlines()
        assert lines == [r["leef"] for r in want[kind]], f"{kind}: {first_difference(lines, [r['leef'] for r in want[kind]])}"
        out += [(kind, r) for r in want[kind]]
    return out


def check_syslog(received, expected, header, limit=8096):
    """Each expected record arrived exactly once, whole or cut on a character boundary with the
    marker; nothing else arrived (no record forged, split or doubled). Returns how many were cut."""
    want = collections.defaultdict(list)
    for kind, record in expected:
        want[record["leef"]].append((kind, record["sev"]))
    cut = []
    for message in received:
        match = header.match(message)
        assert match, f"not a whole siem_tool message (split or forged?): {message[:300]!r}"
        assert len(message) <= limit, "longer than MaxMessageSize"
        body = message[match.end():]
        body.decode("utf-8")   # cut on a character boundary, never inside one
        if CUT_MARK.search(body):
            cut.append((match, body))
            continue
        text = body.decode("utf-8")
        assert want.get(text), f"arrived but not expected, or twice: {text[:300]!r}"
        check_origin(match, *want[text].pop())
    for match, body in sorted(cut, key=lambda c: -len(c[1])):
        size, prefix = int(CUT_MARK.search(body).group(1)), body[:CUT_MARK.search(body).start()].decode("utf-8")
        candidates = [t for t, left in want.items()
                      if left and t.startswith(prefix) and match.end() + len(t.encode()) == size]
        assert candidates, f"a cut message that matches no record: {body[:300]!r}"
        check_origin(match, *want[candidates[0]].pop())
    missing = [t for t, left in want.items() for _ in left]
    assert not missing, f"{len(missing)} records never arrived, e.g. {missing[0][:300]!r}"
    return len(cut)


def check_origin(match, kind, sev):
    assert int(match.group(1)) == 20 * 8 + SYSLOG_SEVERITY[sev], "PRI = local4 + the severity of sev"
    assert match.group(2) in (b"", kind.encode()), "RFC 5424 MSGID names the kind"


def check_hec(events, expected):
    """Each record is one envelope: event = <PRI> + its LEEF line, index = kind, host = the endpoint's
    (cleaned, left out when empty), time = its endpoint time (left out when that does not parse)."""
    got = collections.Counter((e["index"], e["event"], e.get("host"), e.get("time")) for e in events)
    want = collections.Counter(
        (kind, f"<{160 + SYSLOG_SEVERITY[r['sev']]}>{r['leef']}", r["host"],
         calendar.timegm(r["time"].timetuple()) if r["time"] else None) for kind, r in expected)
    assert got == want, (f"missing: {list(want - got)[:2]!r}"[:1500], f"unexpected: {list(got - want)[:2]!r}"[:1500])
    assert all(e["source"] == "TMPS3" and e["sourcetype"] == "tmps3:leef" for e in events)


def local_copies(site):
    return collections.Counter(line for p in sorted((site.folder / "sent").glob("*.leef"))
                               for line in p.read_text("utf-8").splitlines())


TRANSPORTS = ["rsyslog-udp", "rsyslog-tcp", "rsyslog-tls-octet-counting", "qradar-tls", "hec",
              "rsyslog-tcp-x5E", "hec-x7C"]


@pytest.fixture(scope="module")
def qradar_cert(tmp_path_factory):
    return certs.self_signed(tmp_path_factory.mktemp("qradar"))


def configure_transport(site, transport, rsyslog, rsyslog_factory, hec, qradar_cert, **extra):
    """(siem, receiver, header) for one transport, config.ini written for it."""
    if transport.startswith("hec"):
        splunk_config(site, hec, **extra)
        return "splunk", hec, None
    if transport == "qradar-tls":
        server = rsyslog_factory(qradar_cert.cert, qradar_cert.key)
        qradar_config(site, server.tls_port, qradar_cert.cert, **extra)
        return "qradar", server, RFC3164
    protocol = transport.split("-")[1].upper()
    port = {"UDP": rsyslog.udp_port, "TCP": rsyslog.tcp_port, "TLS": rsyslog.tls_port}[protocol]
    if transport.endswith("octet-counting"):
        extra["Framing"] = "octet-counting"
    rsyslog_config(site, port, protocol, CertFile=rsyslog.ca, **extra)
    return "rsyslog", rsyslog, RFC5424


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hostile_store_end_to_end(hostile_site, transport, rsyslog, rsyslog_factory, hec, qradar_cert):
    """The whole hostile store through one transport to a real peer; what arrived, record by record."""
    site = hostile_site
    siem, receiver, header = configure_transport(site, transport, rsyslog, rsyslog_factory, hec, qradar_cert)
    delimiter = {"x5E": "^", "x7C": "|"}.get(transport[-3:], "\t")
    if delimiter != "\t":   # the LEEF delimiter in use is a value too
        set_keys(site.config, "General Setting", LeefDelimiter=transport[-3:])
    expected = expected_records(site, delimiter)
    start = receiver.mark() if header else 0
    result = site.run("send", f"--siem={siem}", "--log=all", "-d", env={"TZ": "UTC"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    counts = sends(result)
    assert {k: n for k, (n, _) in counts.items()} == dict(collections.Counter(k for k, _ in expected))
    if header is None:
        check_hec(hec.events, expected)
        assert cut_count(result) == 0, "HEC takes whole records: nothing is cut"
        no_token_anywhere(site, result)
    else:
        received = receiver.wait_for(len(expected), start=start)
        cut = check_syslog(received, expected, header)
        assert cut == cut_count(result) > 0, "the 64 KB values are cut, and the summary counts them"
    assert local_copies(site) == collections.Counter(r["leef"] for _, r in expected)
    again = site.run("send", f"--siem={siem}", "--log=all")
    assert again.returncode == 0 and total_sent(again) == 0, "the next run sends nothing twice"


def filter_rows(store, kind):
    """(when, typeof(when), ip, host) of every row of a kind, as the filters see them (test_filters.SOURCES)."""
    from test_filters import SOURCES
    source, when, ip, host = SOURCES[kind]
    db = read_only(store)
    db.text_factory = bytes
    try:
        return db.execute(f"SELECT {when}, typeof({when}), {ip}, {host} FROM {source}").fetchall()
    finally:
        db.close()


def ipv4(value):
    import ipaddress
    with contextlib.suppress(ValueError):
        return ipaddress.IPv4Address(text_of(value).strip())
    return None


@pytest.mark.parametrize("option", ["--hostname=製造ライン-pc01", "--hostname=HMI|LINE=2", "--ip=192.168.137.129",
                                    "--netmask=10.0.0.0/8", "--date 05012026 06012026"])
def test_filters_on_hostile_store(hostile_site, option):
    """Invalid UTF-8, text and numbers in host and IP columns: the filter skips them, never stops the export."""
    import ipaddress
    name, _, value = option.partition("=")
    keep = {
        "--hostname": lambda w, t, ip, h: h is not None and text_of(h).casefold() == value.casefold(),
        "--ip": lambda w, t, ip, h: ipv4(ip) == ipaddress.IPv4Address(value),
        "--netmask": lambda w, t, ip, h: ipv4(ip) is not None and ipv4(ip) in ipaddress.IPv4Network(value),
        "--date": lambda w, t, ip, h: t == b"text" and b"2026-01-05 00:00:00" <= w < b"2026-01-07 00:00:00",
    }[name.split()[0]]
    result = hostile_site.run("export", "--log=all", "--format=leef", *option.split())
    assert result.returncode == 0 and result.stderr == "", result.stderr
    found = export_summary(result)
    for kind in KINDS:
        want = sum(1 for row in filter_rows(hostile_site.store, kind) if keep(*row))
        assert found[kind][0] == want, kind
        assert found[kind][1].read_text("utf-8").count("\n") == want
    assert sum(n for n, _ in found.values()) > 0


@pytest.fixture
def extreme_times_site(tmp_path, store_cache):
    """Endpoint clocks at the ends of the calendar: year 1 and year 9999."""
    site = Site(tmp_path / "site", store_cache("--scans", 20, "--hosts", 4, "--apps", 3, "--updates", 2))
    db = sqlite3.connect(site.store)
    db.execute("UPDATE scan_log SET start_time = '0001-01-01 00:00:00', end_time = '9999-12-31 23:59:59' WHERE id = 3")
    db.execute("UPDATE scan_log SET start_time = '9999-12-31 23:59:59', end_time = '0001-01-01 00:00:00' WHERE id = 4")
    db.execute("UPDATE asset_info SET collected_at = '0001-01-01 00:00:00' WHERE id = 2")
    db.execute("UPDATE asset_info SET collected_at = '9999-12-31 23:59:59' WHERE id = 3")
    db.commit()
    db.close()
    return site


@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo"])
@pytest.mark.parametrize("how", ["export-leef-with-zone", "send-hec", "startdate-year-1"])
def test_extreme_endpoint_times(extreme_times_site, hec, rsyslog, how, tz):
    """Times that parse but sit at the ends of the calendar must not stop the run (exit 1)."""
    site = extreme_times_site
    env = {"TZ": tz}
    if how == "export-leef-with-zone":
        site.configure(general={"LeefTimeFormat": "yyyy-MM-dd'T'HH:mm:ssXXX"})
        result = site.run("export", "--log=all", "--format=leef", env=env)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        found = export_summary(result)
        assert found["scannedlog"][0] == 22 and found["assetinfo"][0] == 8
        return
    if how == "send-hec":
        splunk_config(site, hec)
        result = site.run("send", "--siem=splunk", "--log=all", env=env)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert len(hec.events) == total_sent(result) == sum(site.sql(f"SELECT count(*) FROM {t}")[0][0]
                                                            for t in TABLES.values())
        assert all(isinstance(e.get("time", 0), (int, float)) for e in hec.events)
        return
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    start = rsyslog.mark()
    result = site.run("send", "--siem=rsyslog", "--log=scannedlog", "--startdate=0001-01-01 00:00:00", env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert total_sent(result) == 22 and len(rsyslog.wait_for(22, start=start)) == 22


# --- 2. the store ----------------------------------------------------------------

def append_rows(site, scans=10, seed=7, imported_at="2030-01-01 00:00:00"):
    from conftest import make_store
    make_store(site.store, "--append", "--scans", scans, "--seed", seed, "--hosts", 3, "--apps", 2,
               "--updates", 1, "--imported-at", imported_at)


def drop(what):
    def damage(store):
        db = sqlite3.connect(store)
        db.execute(what)
        db.commit()
        db.close()
    return damage


def truncate_to(fraction=None, size=None):
    def damage(store):
        os.truncate(store, size if size is not None else int(store.stat().st_size * fraction) // 4096 * 4096)
    return damage


STORE_DAMAGE = {
    "missing": (lambda store: store.unlink(), "not found; set InstalledFolder in config.ini"),
    "truncated-half": (truncate_to(0.5), "damaged"),
    "truncated-last-page": (truncate_to(size=None, fraction=0.97), "damaged"),
    "truncated-to-header": (truncate_to(size=100), "damaged"),
    "empty-file": (truncate_to(size=0), "not an SQLite log store"),
    "not-sqlite": (lambda store: store.write_bytes(b"MZ\x90\x00\x03" + bytes(range(256)) * 64), "not an SQLite log store"),
    "table-missing": (drop("DROP TABLE update_info"), "no table update_info (needed for updateinfo)"),
    "column-missing": (drop("ALTER TABLE scan_log DROP COLUMN comment"),
                       "table scan_log has no column comment (needed for scannedlog)"),
}


@pytest.mark.parametrize("damage", list(STORE_DAMAGE))
def test_damaged_store_stops_send_with_exit_3(tmp_path, store_cache, rsyslog, damage):
    """After a good run and new imports, the store is damaged: exit 3, one line, nothing sent,
    config.ini, the state file and the store's bytes as they were; once repaired, nothing is lost."""
    source = store_cache("--scans", 20, "--hosts", 4, "--apps", 3, "--updates", 2)
    site = Site(tmp_path / "site", source)
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    assert site.run("send", "--siem=rsyslog", "--log=all").returncode == 0
    append_rows(site)
    good = site.store.read_bytes()
    do, phrase = STORE_DAMAGE[damage]
    do(site.store)
    before = untouched(site)
    start = rsyslog.mark()
    result = site.run("send", "--siem=rsyslog", "--log=all")
    one_line(result, 3, f"log store {site.store}: ", phrase)
    assert untouched(site) == before
    assert rsyslog.line_count() == start, "nothing was sent"
    site.store.write_bytes(good)   # the Management Program repaired it
    again = site.run("send", "--siem=rsyslog", "--log=all")
    assert again.returncode == 0, again.stderr
    new = sum(site.sql(f"SELECT count(*) FROM {t} WHERE imported_at = '2030-01-01 00:00:00'")[0][0]
              for t in TABLES.values())
    assert total_sent(again) == new and len(rsyslog.wait_for(new, start=start)) == new


SHORT_WAIT = 1.5
SHORT_WAIT_RUNNER = """
import inspect, sys
sys.path.insert(0, {root!r})
import siem_tool
# The store's busy wait (30 s) made short so the test stays quick; the code path is the product's.
init = siem_tool.Store.__init__
names = [p.name for p in inspect.signature(init).parameters.values()
         if p.default is not inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD]
if "timeout" in names:
    defaults = list(init.__defaults__)
    defaults[names.index("timeout") - len(names) + len(defaults)] = {wait!r}
    init.__defaults__ = tuple(defaults)
sys.exit(siem_tool.main(sys.argv[1:]))
"""


def test_store_locked_longer_than_the_wait(site, rsyslog):
    """The Management Program holds an exclusive lock for longer than siem_tool waits: exit 3."""
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    assert site.run("send", "--siem=rsyslog", "--log=scannedlog").returncode == 0
    db = sqlite3.connect(site.store)
    db.execute("PRAGMA journal_mode=DELETE")   # a rollback journal: an exclusive lock stops readers
    db.close()
    before = untouched(site)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys\n"
        f"db = sqlite3.connect({str(site.store)!r}, isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "db.execute('ROLLBACK')\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", SHORT_WAIT_RUNNER.format(root=str(ROOT), wait=SHORT_WAIT),
                                 "send", "--siem=rsyslog", "--log=all", f"--config={site.config}"],
                                capture_output=True, text=True, timeout=120)
        waited = time.monotonic() - started
    finally:
        holder.communicate("", timeout=30)
    one_line(result, 3, f"log store {site.store}: ", "locked")
    assert waited >= SHORT_WAIT, "it waited for the lock before giving up"
    assert untouched(site) == before


def test_purged_rows_between_runs(site, rsyslog):
    """The Management Program purges old logs, then imports new ones: only the new ones are sent, all of them."""
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    assert site.run("send", "--siem=rsyslog", "--log=all").returncode == 0
    db = sqlite3.connect(site.store)
    for table in TABLES.values():
        db.execute(f"DELETE FROM {table} WHERE id <= (SELECT max(id) * 2 / 3 FROM {table})")
    db.commit()
    db.close()
    append_rows(site, scans=30)
    want = oracle(site.store)
    new = collections.Counter(r["leef"] for k in KINDS for r in want[k] if r["imported_at"] == "2030-01-01 00:00:00")
    start = rsyslog.mark()
    result = site.run("send", "--siem=rsyslog", "--log=all")
    assert result.returncode == 0, result.stderr
    assert total_sent(result) == sum(new.values())
    received = rsyslog.wait_for(sum(new.values()), start=start)
    assert collections.Counter(leef_text(r) for r in received) == new


def leef_text(message):
    text = message.decode("utf-8")
    return text[text.index("LEEF:2.0|"):]


def test_everything_purged_then_ids_start_again_at_1(tmp_path, store_cache, rsyslog):
    """A purge that empties the tables: SQLite gives the next rows ids from 1 again (INTEGER PRIMARY KEY
    without AUTOINCREMENT, schema.sql), below the saved resume point. Every new record must still go out."""
    site = Site(tmp_path / "site", store_cache("--scans", 20, "--hosts", 4, "--apps", 3, "--updates", 2))
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    assert site.run("send", "--siem=rsyslog", "--log=all").returncode == 0
    resume = {k: v["id"] for k, v in state_of(site).items()}
    db = sqlite3.connect(site.store)
    for table in TABLES.values():
        db.execute(f"DELETE FROM {table}")
    db.commit()
    db.close()
    append_rows(site, scans=80, seed=11)
    counts = {k: site.sql(f"SELECT count(*), max(id) FROM {TABLES[k]}")[0] for k in KINDS}
    assert counts["scannedlog"][1] > resume["scannedlog"], "the new ids pass the old resume point"
    start = rsyslog.mark()
    result = site.run("send", "--siem=rsyslog", "--log=all")
    assert result.returncode == 0, result.stderr
    sent = sends(result)
    assert {k: sent[k][0] for k in KINDS} == {k: counts[k][0] for k in KINDS}, \
        f"resume points {resume} were taken for ids of new rows"
    assert len(rsyslog.wait_for(sum(c for c, _ in counts.values()), start=start)) == sum(c for c, _ in counts.values())


def test_ids_that_jump(site, rsyslog):
    """New rows whose ids jump past 2**32 and 2**53, within a run and between runs: each sent once."""
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    assert site.run("send", "--siem=rsyslog", "--log=all").returncode == 0
    db = sqlite3.connect(site.store)
    for k, new_id in enumerate((5_000_000_000, 2**53 + 1)):
        db.execute("INSERT INTO scan_log SELECT ?, '2030-01-01 00:00:00', log_id || ?, log_version, start_time,"
                   " end_time, device_id, device_name, device_vid, device_pid, device_sid, scanner_version,"
                   " scan_engine_version, pattern_version, host_id, host_name, host_domain, user_name, host_ip,"
                   " host_mac, host_os, scanned_status, scanned_files, infected_files, fixed_files, scan_target,"
                   " exclusion_path, exclusion_file, exclusion_extension, comment FROM scan_log WHERE id = 1",
                   (new_id, f"-jump{k}"))
        db.execute("INSERT INTO application_info SELECT ?, '2030-01-01 00:00:00', asset_id, host_id, name || ?,"
                   " publisher, installed_date, size, version, install_path FROM application_info WHERE id = 1",
                   (new_id, f" jump{k}"))
    db.commit()
    db.close()
    append_rows(site, scans=5)   # continues after the highest id
    new = {k: site.sql(f"SELECT count(*), max(id) FROM {TABLES[k]} WHERE imported_at = '2030-01-01 00:00:00'")[0]
           for k in KINDS}
    start = rsyslog.mark()
    result = site.run("send", "--siem=rsyslog", "--log=all")
    assert result.returncode == 0, result.stderr
    assert {k: n for k, (n, _) in sends(result).items()} == {k: c for k, (c, _) in new.items()}
    assert state_of(site)["scannedlog"]["id"] == new["scannedlog"][1] > 2**53
    total = sum(c for c, _ in new.values())
    assert len(rsyslog.wait_for(total, start=start)) == total
    assert total_sent(site.run("send", "--siem=rsyslog", "--log=all")) == 0


# --- 3. network and SIEM -------------------------------------------------------------

SMALL = ("--scans", 20, "--hosts", 4, "--apps", 3, "--updates", 2)


@pytest.fixture
def small_site(tmp_path, store_cache):
    return Site(tmp_path / "site", store_cache(*SMALL))


def all_records(site):
    db = read_only(site.store)
    try:
        return sum(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES.values())
    finally:
        db.close()


SECTION = {"rsyslog-udp": "RSyslog", "rsyslog-tcp": "RSyslog", "rsyslog-tls": "RSyslog", "qradar": "QRadar",
           "hec": "Splunk"}


def configure_peer(site, peer, rsyslog, hec, port=None, address="127.0.0.1", cert=None, **extra):
    """config.ini for one peer; port/address/cert default to the real, working peer."""
    if peer == "hec":
        splunk_config(site, hec, ServerAddress=address, ServerPort=port or hec.port, CertFile=cert or hec.ca,
                      RetrySeconds=1, **extra)
        return "splunk"
    if peer == "qradar":
        qradar_config(site, port or rsyslog.tls_port, cert or rsyslog.ca, ServerAddress=address, **extra)
        return "qradar"
    protocol = peer.split("-")[1].upper()
    real = {"UDP": rsyslog.udp_port, "TCP": rsyslog.tcp_port, "TLS": rsyslog.tls_port}[protocol]
    rsyslog_config(site, port or real, protocol, ServerAddress=address, CertFile=cert or rsyslog.ca, **extra)
    return "rsyslog"


def next_run_delivers_everything(site, peer, rsyslog, hec):
    """The admin fixed what the line said (or the server is back): the real peer, nothing lost."""
    working = {"hec": (hec.port, hec.ca), "qradar": (rsyslog.tls_port, rsyslog.ca)}.get(
        peer, ({"udp": rsyslog.udp_port, "tcp": rsyslog.tcp_port, "tls": rsyslog.tls_port}.get(peer[-3:]), rsyslog.ca))
    set_keys(site.config, SECTION[peer], ServerAddress="127.0.0.1", ServerPort=working[0], CertFile=working[1],
             TLSServerName="")
    hec.reset()
    start = rsyslog.mark()
    siem = {"hec": "splunk", "qradar": "qradar"}.get(peer, "rsyslog")
    result = site.run("send", f"--siem={siem}", "--log=all", "-d")
    assert result.returncode == 0, result.stderr
    want = all_records(site)
    assert total_sent(result) == want
    arrived = len(hec.events) if peer == "hec" else len(rsyslog.wait_for(want, start=start))
    assert arrived == want
    return result


def refused(site, peer, result, *phrases):
    """Exit 4, one line naming the SIEM and what to fix, checkpoint not moved, token never shown."""
    label = {"hec": "Splunk HEC", "qradar": "QRadar"}.get(peer, "RSyslog")
    one_line(result, 4, label, "checkpoint not moved", *phrases)
    no_token_anywhere(site, result)


PEERS = ["rsyslog-udp", "rsyslog-tcp", "rsyslog-tls", "qradar", "hec"]


@pytest.mark.parametrize("peer", PEERS)
def test_server_down_at_start(small_site, rsyslog, hec, peer):
    site = small_site
    kind = socket.SOCK_DGRAM if peer == "rsyslog-udp" else socket.SOCK_STREAM
    siem = configure_peer(site, peer, rsyslog, hec, port=free_port(kind))
    before = untouched(site)
    result = site.run("send", f"--siem={siem}", "--log=all", "-d")
    refused(site, peer, result, "connection refused; check ServerAddress/ServerPort")
    assert untouched(site) == before and hec.events == []
    next_run_delivers_everything(site, peer, rsyslog, hec)


@pytest.mark.parametrize("peer", PEERS)
def test_unresolvable_name(small_site, rsyslog, hec, peer):
    site = small_site
    siem = configure_peer(site, peer, rsyslog, hec, address="siem.no-such-name.invalid")
    before = untouched(site)
    result = site.run("send", f"--siem={siem}", "--log=all", "-d")
    refused(site, peer, result, "siem.no-such-name.invalid", "the name cannot be resolved; check ServerAddress")
    assert untouched(site) == before
    next_run_delivers_everything(site, peer, rsyslog, hec)


class CuttingProxy:
    """Forwards TCP to a real server. Once clients have sent `cut_after` bytes in all, it resets
    that connection on both sides (RST) and stops listening: the server is gone in mid-run."""

    def __init__(self, upstream_port, cut_after):
        self.upstream_port, self.cut_after = upstream_port, cut_after
        self.forwarded, self.cut = 0, threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def stop(self):
        self.cut.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.listener.close()

    def _accept(self):
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self.threads.append(thread)
            thread.start()
        self.listener.close()   # gone: the next connection is refused

    def _pump(self, client, upstream):
        open_ends = {client: upstream, upstream: client}
        try:
            while open_ends and not (self.cut.is_set() and client in open_ends):
                readable, _, _ = select.select(list(open_ends), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        open_ends.pop(sock).shutdown(socket.SHUT_WR)
                        continue
                    if sock is client:
                        room = self.cut_after - self.forwarded
                        self.forwarded += min(room, len(data))
                        if len(data) >= room:
                            upstream.sendall(data[:room])
                            self.cut.set()
                            return
                    open_ends[sock].sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()


@pytest.mark.parametrize("peer", ["rsyslog-tcp", "rsyslog-tls", "hec"])
def test_server_gone_in_mid_run(tmp_path, store_cache, rsyslog, hec, peer):
    """Connection reset in the middle of the second batch, the server gone after it: exit 4, the first
    batch counted, and the next run delivers the rest; at most the batch in flight arrives twice."""
    site = Site(tmp_path / "site", store_cache("--scans", 2400, "--hosts", 20, "--apps", 1, "--updates", 1))
    lines = [r["leef"] for r in oracle(site.store)["scannedlog"]]
    if peer == "hec":   # gzip'ed envelopes: cut at about 40 % of the compressed bytes
        cut_after = len(gzip.compress("\n".join(lines).encode(), 1)) * 2 // 5
        upstream, batch = hec.port, None
    else:               # past the first batch of 1,000 records, inside the second
        cut_after = sum(len(line.encode()) + 100 for line in lines[:1000]) + sum(len(l.encode()) for l in lines[1000:1400])
        upstream, batch = (rsyslog.tcp_port if peer == "rsyslog-tcp" else rsyslog.tls_port), 1000
    proxy = CuttingProxy(upstream, cut_after)
    try:
        siem = configure_peer(site, peer, rsyslog, hec, port=proxy.port, **({"BatchBytes": 100000} if peer == "hec" else {}))
        set_keys(site.config, SECTION[peer], RetrySeconds=2)
        start = rsyslog.mark()
        result = site.run("send", f"--siem={siem}", "--log=scannedlog", "-d")
    finally:
        proxy.stop()
    assert proxy.cut.is_set(), "the proxy cut the connection in the middle of the run"
    one_line(result, 4, "checkpoint moved: scannedlog to id ")
    resume = state_of(site)["scannedlog"]["id"]
    assert f"checkpoint moved: scannedlog to id {resume};" in result.stderr
    if batch:
        assert resume == batch, "the first batch was confirmed, the second was not"
        assert "the server closed the connection" in result.stderr or "TLS" in result.stderr
    else:
        assert 0 < resume <= len(hec.events) < len(lines), "what HEC acknowledged is counted, no more"
    first = [leef_of_hec(e) for e in hec.events] if peer == "hec" else \
        [leef_text(m) for m in rsyslog.received(start) if b"LEEF:2.0|" in m]
    start2 = rsyslog.mark()
    events_before = len(hec.events)
    set_keys(site.config, SECTION[peer], ServerPort=upstream)
    again = site.run("send", f"--siem={siem}", "--log=scannedlog")
    assert again.returncode == 0, again.stderr
    assert sends(again)["scannedlog"][0] == len(lines) - resume
    second = [leef_of_hec(e) for e in hec.events[events_before:]] if peer == "hec" else \
        [leef_text(m) for m in rsyslog.wait_for(len(lines) - resume, start=start2)]
    arrived = collections.Counter(first + second)
    torn = [line for line in arrived if line not in set(lines)]
    assert len(torn) <= 1 and all(any(l.startswith(t) for l in lines) for t in torn), "only the torn tail of the cut batch"
    assert not collections.Counter(lines) - arrived, "nothing lost"
    assert sum((arrived - collections.Counter(lines)).values()) - len(torn) <= 1000, "at most one batch twice"


def leef_of_hec(event):
    return event["event"][event["event"].index(">") + 1:]


def wait_until(condition, timeout=15):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the HEC server did not finish the delayed requests"
        time.sleep(0.02)


def test_slow_hec_answer_is_retried(small_site, hec):
    """HEC answers after Timeout once: the request is sent again and the run ends well."""
    site = small_site
    splunk_config(site, hec, Timeout=1, RetrySeconds=20)
    hec.delay_next(1, 2.5)
    result = site.run("send", "--siem=splunk", "--log=all", "-d")
    wait_until(lambda: len(hec.posts) >= hec.connections)   # the slow answer landed too
    assert result.returncode == 0, result.stderr
    got = collections.Counter(map(leef_of_hec, hec.events))
    want = collections.Counter(r["leef"] for records in oracle(site.store).values() for r in records)
    assert not want - got, "nothing lost"
    assert sum((got - want).values()) <= 1000, "at most the slow batch twice"
    no_token_anywhere(site, result)


def test_slow_hec_gives_up_then_next_run_delivers(small_site, rsyslog, hec):
    """HEC never answers within Timeout: exit 4 within RetrySeconds, one line that says what to raise."""
    site = small_site
    splunk_config(site, hec, Timeout=0.5, RetrySeconds=1.5)
    before = untouched(site)
    hec.delay_next(50, 2)
    started = time.monotonic()
    result = site.run("send", "--siem=splunk", "--log=all", "-d")
    took = time.monotonic() - started
    wait_until(lambda: len(hec.posts) >= hec.connections)
    refused(site, "hec", result, "Timeout")
    assert took < 15 and untouched(site) == before
    hec.restore_defaults()
    next_run_delivers_everything(site, "hec", rsyslog, hec)


class TlsProbeServer:
    """A TLS server on 127.0.0.1 presenting what the tool must refuse (a certificate, or a protocol
    version); it records the handshakes that succeeded and every application byte it got."""

    def __init__(self, cert, key, only=None):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if only is not None:   # an old server: this version alone (OpenSSL 3 wants SECLEVEL 0 for it)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.context.set_ciphers("DEFAULT:@SECLEVEL=0")
                self.context.minimum_version = self.context.maximum_version = only
        self.versions, self.data, self.stopping = [], bytearray(), threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            conn.settimeout(5)
            with contextlib.suppress(OSError), conn:
                tls = self.context.wrap_socket(conn, server_side=True)
                self.versions.append(tls.version())
                while chunk := tls.recv(65536):
                    self.data += chunk

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def tls_server():
    started = []

    def start(files, only=None):
        started.append(TlsProbeServer(files.cert, files.key, only))
        return started[-1]
    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA the tool is told to trust, with certificates that must still be refused."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca_path = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))

    def leaf(prefix, *names):
        issued = ca.issue_cert(*names)
        cert, key = folder / f"{prefix}-cert.pem", folder / f"{prefix}-key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return certs.CertFiles(str(cert), str(key), str(ca_path))

    expired = certs.expired(folder)
    return {"good": leaf("good", "127.0.0.1"), "misnamed": leaf("misnamed", "other.example.invalid"),
            "unrelated": certs.unrelated(folder), "expired": expired}


def old_tls_version(pki):
    """The oldest version this OpenSSL can still serve (and a client still speak), for the 'only TLS
    older than 1.2' case; None if it cannot serve any."""
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        server = TlsProbeServer(pki["good"].cert, pki["good"].key, only=version)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                client.load_verify_locations(pki["good"].ca)
                client.set_ciphers("DEFAULT:@SECLEVEL=0")
                client.minimum_version = client.maximum_version = version
            with client.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5),
                                    server_hostname="127.0.0.1") as tls:
                if tls.version() in ("TLSv1", "TLSv1.1"):
                    return version
        except (ssl.SSLError, OSError):
            continue
        finally:
            server.stop()
    return None


TLS_CASES = {   # case: (served certificate, CertFile, what the one line must say)
    "expired": ("expired", "expired", "the server's certificate has expired"),
    "wrong-certificate": ("unrelated", "ca", "neither in nor signed by"),
    "name-mismatch-without-pin": ("misnamed", "ca", "TLSServerName"),
    "tls-1.0-only": ("good", "ca", "TLS older than 1.2"),
}


@pytest.mark.parametrize("case,peer", [
    (case, peer) for case in TLS_CASES for peer in ("rsyslog-tls", "qradar", "hec")
    # QRadar with an expired or unrelated certificate: test_send.py::test_qradar_refuses_other_certificates
    if not (peer == "qradar" and case in ("expired", "wrong-certificate"))])
def test_tls_refused(small_site, rsyslog, hec, pki, tls_server, peer, case):
    """Each TLS failure: exit 4, one line saying why and what to fix, not one record in clear or to
    the wrong server; the next run, once fixed, delivers everything."""
    site = small_site
    served, trusted, phrase = TLS_CASES[case]
    only = None
    if case == "tls-1.0-only":
        only = old_tls_version(pki)
        if only is None:
            pytest.skip("this OpenSSL cannot serve TLS 1.0 or 1.1 even at SECLEVEL=0")
    server = tls_server(pki[served], only)
    cert_file = pki[served].ca if trusted == "expired" else pki["good"].ca
    siem = configure_peer(site, peer, rsyslog, hec, port=server.port, cert=cert_file)
    before = untouched(site)
    result = site.run("send", f"--siem={siem}", "--log=all", "-d")
    refused(site, peer, result, phrase)
    assert bytes(server.data) == b"", "not one byte of data to a server that failed the check"
    assert untouched(site) == before
    next_run_delivers_everything(site, peer, rsyslog, hec)


@pytest.mark.parametrize("peer", ["rsyslog-tls", "hec"])
def test_plain_text_server_on_the_tls_port(small_site, rsyslog, hec, plain_listener_factory, peer):
    """A plain syslog port, or an HEC with SSL turned off: exit 4, 'not TLS', nothing sent in clear."""
    site = small_site
    reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" if peer == "hec" else b""
    listener = plain_listener_factory(reply=reply)
    siem = configure_peer(site, peer, rsyslog, hec, port=listener.port, Timeout=2)
    before = untouched(site)
    result = site.run("send", f"--siem={siem}", "--log=all", "-d")
    refused(site, peer, result, "non-TLS")
    assert listener.connections and b"LEEF" not in listener.data and b"Splunk " not in listener.data
    assert untouched(site) == before
    next_run_delivers_everything(site, peer, rsyslog, hec)


# --- 4. secrets --------------------------------------------------------------------

TOKEN_LINES = {   # the token's own line goes wrong: ([Splunk] lines (bytes), what the one line must say)
    "continued-on-the-next-line": (b"Token = 11111111-2222-SECRETPART\r\n    -4444-555555555555\r\n",
                                   "line 10: not a 'Key = value' line"),   # no value spans lines
    "full-width-characters": ("Token = １１１１１１１１-SECRETPART-５５５５\r\n".encode(), "Token"),
    "control-character": (b"Token = 11111111-SECRETPART\x01-5555\r\n", "Token"),
    "duplicate-key": (b"Token = SECRETPART-1\r\nTOKEN = SECRETPART-2\r\n", "token appears twice"),
    "before-any-section": (b"", "a setting before any [section]"),
    "undecodable-bytes": (b"Token = SECRETPART-\x81\x7f\r\n", "not readable as UTF-8, UTF-16 or Shift_JIS"),
}


@pytest.mark.parametrize("case", list(TOKEN_LINES))
def test_token_never_shown_when_its_line_is_wrong(small_site, hec, case):
    """No part of the token on screen, in the debug log or in any file the tool writes; one clear line."""
    site = small_site
    lines, phrase = TOKEN_LINES[case]
    head = b"Token = SECRETPART-0\r\n" if case == "before-any-section" else b""
    site.config.write_bytes(head + b"[General Setting]\r\nStartdate =\r\nInstalledFolder = Management Program\r\n"
                            b"[Splunk]\r\nServerAddress = 127.0.0.1\r\nServerPort = %d\r\nCertFile = %s\r\n"
                            b"RetrySeconds = 1\r\n" % (hec.port, hec.ca.encode()) + lines)
    for args in (["send", "--siem=splunk", "--log=all", "-d"], ["export", "--log=all", "--format=leef", "-d"]):
        result = site.run(*args)
        if result.returncode == 0 and args[0] == "export":
            continue   # a token export does not use may be wrong
        assert result.returncode in (2, 4), result.stderr
        one_line(result, result.returncode, phrase)
        no_token_anywhere(site, result, token="SECRETPART")
    assert hec.events == []


# --- 5. config.ini as Windows edits it -------------------------------------------------

WINDOWS_CONFIG = ("; 設定ファイル - TMPS3 SIEM ツール\r\n[General Setting]\r\n; 最後に送った時刻（自動更新）\r\n"
                  "Startdate =\r\nInstalledFolder = Management Program\r\n\r\n[RSyslog]\r\nServerAddress = 127.0.0.1\r\n"
                  "serverport = {port}\r\nProtocol = TCP\r\n; 終わり\r\n")
ENCODINGS = {   # how Windows saved it: (codec, BOM)
    "utf-8-bom-notepad": ("utf-8", b"\xef\xbb\xbf"),
    "utf-16-le-powershell": ("utf-16-le", b"\xff\xfe"),
    "utf-16-be": ("utf-16-be", b"\xfe\xff"),
    "cp932-ansi-notepad": ("cp932", b""),
    "utf-16-le-no-bom-cmd-u": ("utf-16-le", b""),
    "utf-16-le-no-bom-ascii-only": ("utf-16-le", b""),
}


@pytest.mark.parametrize("saved", list(ENCODINGS))
def test_config_encodings_end_to_end(small_site, rsyslog, saved):
    """Read it and keep it as it was (only the Startdate value changes), or say clearly how to save it."""
    site = small_site
    codec, bom = ENCODINGS[saved]
    text = WINDOWS_CONFIG.format(port=rsyslog.tcp_port)
    if saved.endswith("ascii-only"):   # e.g. written by `cmd /u /c echo ... > config.ini`
        text = "".join(line for line in text.splitlines(keepends=True) if line.isascii())
    site.config.write_bytes(bom + text.encode(codec))
    before = site.config.read_bytes()
    start = rsyslog.mark()
    result = site.run("send", "--siem=rsyslog", "--log=all", env={"TZ": "UTC"})
    if result.returncode != 0:
        one_line(result, 2, str(site.config))
        assert re.search(r"UTF-16|encoding|save it as UTF-8", result.stderr), "say how to save it"
        assert site.config.read_bytes() == before and not (site.folder / "config.state.json").exists()
        return
    want = all_records(site)
    assert total_sent(result) == want and len(rsyslog.wait_for(want, start=start)) == want
    newest = site.sql("SELECT max(imported_at) FROM scan_log")[0][0]
    assert site.config.read_bytes() == bom + text.replace("Startdate =", f"Startdate ={newest}").encode(codec), \
        "only the Startdate value changed; BOM, encoding, CRLF, comments, key case as they were"
    again = site.run("send", "--siem=rsyslog", "--log=all", env={"TZ": "UTC"})
    assert again.returncode == 0 and total_sent(again) == 0


def test_config_in_no_known_encoding(small_site):
    site = small_site
    site.config.write_bytes(b"[General Setting]\r\nStartdate =\r\n; \x81\x7f\xff\xfe\r\n")
    result = site.run("send", "--siem=rsyslog", "--log=all")
    one_line(result, 2, f"{site.config}: not readable as UTF-8, UTF-16 or Shift_JIS text; save it as UTF-8")


DUPLICATES = {
    "section-in-other-letter-case": "[RSyslog]\r\nServerAddress = 127.0.0.1\r\n[RSYSLOG]\r\nProtocol = TCP\r\n",
    "section-with-spaces": "[ General Setting ]\r\nFacility = 3\r\n",
    "startdate-twice": "[RSyslog]\r\nServerAddress = 127.0.0.1\r\n",
    "key-in-other-case": "[RSyslog]\r\nServerAddress = 127.0.0.1\r\nSERVERADDRESS = 10.0.0.1\r\n",
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_duplicate_sections_and_keys(small_site, rsyslog, case):
    """A clear error naming the duplicate; nothing sent, config.ini and the state left as they were.
    (test_bad_input.py: the same section or key written exactly twice.)"""
    site = small_site
    general = "Startdate = \r\nSTARTDATE = 2020-01-01 00:00:00\r\n" if case == "startdate-twice" else "Startdate =\r\n"
    site.config.write_bytes(("\ufeff[General Setting]\r\n" + general + "InstalledFolder = Management Program\r\n"
                             + DUPLICATES[case]).encode("utf-8"))
    before = untouched(site)
    start = rsyslog.mark()
    result = site.run("send", "--siem=rsyslog", "--log=all")
    one_line(result, 2, str(site.config), "appears twice")
    assert untouched(site) == before and rsyslog.line_count() == start


KILL_RUNNER = """
import os, signal, sys
sys.path.insert(0, {root!r})
folder, kill_at, when = {folder!r}, int(os.environ["KILL_AT"]), os.environ["KILL_WHEN"]
log_fd = os.open(os.environ["EVENT_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
seen = 0


def kill(*_):
    os.kill(os.getpid(), signal.SIGKILL)


def hook(event, args):
    # every file operation on config.ini or a file named after it (a temporary copy) is a step
    global seen
    if event not in ("open", "os.rename", "os.replace", "os.remove", "os.truncate", "os.chmod", "os.link"):
        return
    names = [os.fsdecode(a) for a in args if isinstance(a, (str, bytes, os.PathLike))]
    if not any(os.path.dirname(os.path.abspath(n)) == folder and os.path.basename(n).startswith("config.ini")
               for n in names):
        return
    seen += 1
    os.write(log_fd, ("%d %s %s\\n" % (seen, event, names)).encode())
    if seen != kill_at:
        return
    if when == "before":
        kill()
    sys.settrace(kill)                  # just after the step: at the next line anywhere
    frame = sys._getframe(1)
    while frame is not None:
        frame.f_trace, frame.f_trace_lines = kill, True
        frame = frame.f_back


sys.addaudithook(hook)
import siem_tool
sys.exit(siem_tool.main(sys.argv[1:]))
"""


def test_startdate_write_back_killed_at_every_step(small_site, rsyslog, tmp_path):
    """kill -9 before and just after each file operation on config.ini: config.ini is always the old
    file or the new one, whole; the next run then ends well and nothing is lost."""
    site = small_site
    text = WINDOWS_CONFIG.format(port=rsyslog.tcp_port)
    old = b"\xff\xfe" + text.encode("utf-16-le")   # the hardest to rewrite: UTF-16 with BOM, CRLF, Japanese
    events = tmp_path / "events.txt"
    runner = KILL_RUNNER.format(root=str(ROOT), folder=str(site.folder))

    def run(kill_at, when="before"):
        env = dict(os.environ, KILL_AT=str(kill_at), KILL_WHEN=when, EVENT_LOG=str(events), TZ="UTC")
        return subprocess.run([sys.executable, "-c", runner, "send", "--siem=rsyslog", "--log=scannedlog",
                               f"--config={site.config}"], capture_output=True, text=True, env=env, timeout=120)

    site.config.write_bytes(old)
    dry = run(0)
    assert dry.returncode == 0, dry.stderr
    new = site.config.read_bytes()
    assert new != old and new.startswith(b"\xff\xfe")
    steps = len(events.read_text().splitlines())
    assert steps >= 2, "config.ini is read, then written"
    expected = collections.Counter(r["leef"] for r in oracle(site.store)["scannedlog"])
    leftovers = []
    for step in range(1, steps + 1):
        for when in ("before", "after"):
            site.config.write_bytes(old)
            (site.folder / "config.state.json").unlink(missing_ok=True)
            start = rsyslog.mark()
            victim = run(step, when)
            assert victim.returncode == -signal.SIGKILL, (step, when, victim.returncode, victim.stderr)
            assert site.config.read_bytes() in (old, new), f"config.ini torn by a kill {when} step {step}"
            leftovers += [p.name for p in site.folder.iterdir() if p.name.startswith("config.ini.")]
            rerun = run(0)
            assert rerun.returncode == 0, (step, when, rerun.stderr)
            assert site.config.read_bytes() == new
            arrived = collections.Counter(leef_text(m) for m in rsyslog.wait_for(sum(expected.values()), start=start))
            assert not expected - arrived, f"records lost after a kill {when} step {step}"
    print("temporary files left by the kills:", leftovers)


# --- 6. Windows ------------------------------------------------------------------------

@pytest.mark.parametrize("peer", ["rsyslog-tls", "qradar", "hec"])
def test_another_working_directory_relative_certfile_unicode_paths(tmp_path, store_cache, rsyslog, hec, peer):
    """Task Scheduler starts in System32; the folder has spaces, Japanese, % and #; CertFile is relative."""
    folder = tmp_path / "Users" / "山田 太郎" / "siem tool 100% #1 (x86)"
    site = Site(folder, store_cache(*SMALL))
    relative = "証明書 フォルダ/ca cert.pem"
    (folder / "証明書 フォルダ").mkdir()
    shutil.copyfile(hec.ca if peer == "hec" else rsyslog.ca, folder / relative)
    siem = configure_peer(site, peer, rsyslog, hec, cert=relative)
    system32 = tmp_path / "Windows" / "System32"
    system32.mkdir(parents=True)
    start = rsyslog.mark()
    result = site.run("send", f"--siem={siem}", "--log=all", "-d", cwd=system32)
    assert result.returncode == 0, result.stderr
    want = all_records(site)
    assert total_sent(result) == want
    assert (len(hec.events) if peer == "hec" else len(rsyslog.wait_for(want, start=start))) == want
    assert list(system32.iterdir()) == [], "nothing is written to the working directory"
    assert (folder / "config.state.json").exists() and (folder / "debug_log_SIEM-tool.txt").exists()
    assert all(Path(line.split(" -> ")[1]).parent == folder / "sent" for line in result.stdout.splitlines())


def run_with_console(site, *args, encoding="cp932"):
    env = dict(os.environ, PYTHONIOENCODING=encoding)
    result = subprocess.run([sys.executable, str(TOOL), *args, f"--config={site.config}"], capture_output=True,
                            env=env, cwd=ROOT, timeout=120)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(encoding),
                                       result.stderr.decode(encoding))


def test_console_that_cannot_print_some_characters(tmp_path, store_cache, rsyslog):
    """PYTHONIOENCODING=cp932 (a Japanese console) and paths it cannot print: the run goes on."""
    folder = tmp_path / "site é 한국어 😀 データ"
    site = Site(folder, store_cache(*SMALL))
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    exported = run_with_console(site, "export", "--log=all", "--format=leef")
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == 5 and "データ" in exported.stdout
    assert len(list((folder / "export").glob("*.leef"))) == 5
    start = rsyslog.mark()
    sent = run_with_console(site, "send", "--siem=rsyslog", "--log=all", "-d")
    assert sent.returncode == 0, sent.stderr
    want = all_records(site)
    assert len(rsyslog.wait_for(want, start=start)) == want
    assert len(sent.stdout.splitlines()) == 5
    site.store.unlink()   # and an error line with such a path
    failed = run_with_console(site, "send", "--siem=rsyslog", "--log=all")
    assert failed.returncode == 3 and failed.stderr.count("\n") == 1, failed.stderr
    assert failed.stderr.startswith("siem_tool: error: log store ") and "データ" in failed.stderr


# --- property: whole records, every renderer ------------------------------------------------

PROPERTY_ALPHABET = C0 + C1 + "\u2028\u2029|=\\\"'^;, +-@a日\ufffd\U0001F600"
TEXTS = st.one_of(
    st.text(max_size=10),
    st.text(alphabet=st.sampled_from(PROPERTY_ALPHABET), max_size=12),
    st.sampled_from(["Scan completed", "Scan canceled", "Scan suspended", *RESULTS, "=1+2", "-3", "+x", "@y"]),
    st.builds(lambda piece, n: piece * n, st.sampled_from(["A", "日", "\n", "é|"]), st.integers(2000, 9000)),
)
VALUES = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.integers(-1, 3), st.floats(), TEXTS,
                   st.binary(max_size=6).map(Raw), st.binary(max_size=6))
TIMES = st.one_of(st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2100, 12, 31)).map(
    lambda t: f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"), VALUES)
TIME_COLUMNS = {"start_time", "end_time", "collected_at"}


def stored_as_null(value):
    """None, and a float NaN, which SQLite stores as NULL."""
    return value is None or (isinstance(value, float) and value != value)


def draw_store(path, draw):
    """A store (schema.sql) with 1-2 rows of every kind, each column any value SQLite takes."""
    db = sqlite3.connect(path)
    db.executescript((SHARED / "store" / "schema.sql").read_text("utf-8"))
    columns = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})") if r[1] != "id"] for t in TABLES.values()}

    def row(table, **fixed):
        values = {c: draw(TIMES if c in TIME_COLUMNS else VALUES) for c in columns[table]}
        values.update(imported_at="2026-01-01 00:00:00", **fixed)
        values.update({c: "" for c in NOT_NULL if c in values and stored_as_null(values[c])})
        return insert_row(db, table, values)

    log_ids = [unique_log_id(draw(VALUES), i) for i in range(draw(st.integers(1, 2)))]
    for log_id in log_ids:
        row("scan_log", log_id=log_id)
    for _ in range(draw(st.integers(0, 2))):
        row("detection_log", log_id=draw(st.sampled_from(log_ids + ["{orphan}"])))
    assets = [row("asset_info") for _ in range(draw(st.integers(1, 2)))]
    for table in ("application_info", "update_info"):
        for _ in range(draw(st.integers(0, 2))):
            row(table, asset_id=draw(st.sampled_from(assets + [999])))
    db.commit()
    db.close()


def run_main(*args):
    """The command line run in this process (quick enough for many examples)."""
    import siem_tool
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = siem_tool.main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(data=st.data())
def test_property_whole_records_through_every_renderer(data, tmp_path_factory, rsyslog, hec_server):
    """Any rows SQLite takes, any LEEF delimiter, framing, header and size limit: LEEF and CSV files
    equal SPEC's rendering; syslog and HEC deliver each record once, whole or visibly cut, none forged."""
    folder = tmp_path_factory.mktemp("property")
    (folder / "mp" / "Data").mkdir(parents=True)
    store = folder / "mp" / "Data" / "tmps3log.db"
    draw_store(store, data.draw)
    delimiter = data.draw(st.sampled_from(["\t", "^", "|"]), label="delimiter")
    framing = data.draw(st.sampled_from(["lf", "octet-counting"]), label="framing")
    header = data.draw(st.sampled_from(["rfc5424", "rfc3164"]), label="header")
    limit = data.draw(st.sampled_from([480, 8096]), label="MaxMessageSize")
    general = f"[General Setting]\nStartdate =\nInstalledFolder = mp\nLeefDelimiter = x{ord(delimiter):02X}\n"
    syslog_ini, hec_ini = folder / "rsyslog.ini", folder / "splunk.ini"
    syslog_ini.write_text(general + f"[RSyslog]\nServerAddress = 127.0.0.1\nServerPort = {rsyslog.tcp_port}\n"
                          f"Protocol = TCP\nFraming = {framing}\nHeader = {header}\nMaxMessageSize = {limit}\n",
                          encoding="utf-8")
    hec_ini.write_text(general + f"[Splunk]\nServerAddress = 127.0.0.1\nServerPort = {hec_server.port}\n"
                       f"Token = {TOKEN}\nCertFile = {hec_server.ca}\nTimeZone = UTC\nRetrySeconds = 5\n",
                       encoding="utf-8")
    want = oracle(store, delimiter)
    expected = [(kind, r) for kind in KINDS for r in want[kind]]
    for fmt in ("leef", "csv"):
        result = run_main("export", "--log=all", f"--format={fmt}", f"--config={syslog_ini}", f"--output={folder / fmt}")
        assert result.returncode == 0, result.stderr
        for kind, (count, path) in export_summary(result).items():
            if fmt == "leef":
                got, should = path.read_bytes().decode("utf-8").split("\n")[:-1], [r["leef"] for r in want[kind]]
            else:
                got = list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")))[1:]
                should = [r["csv"] for r in want[kind]]
            assert got == should, f"{fmt} {kind}: {first_difference(got, should)}"
    start = rsyslog.mark()
    result = run_main("send", "--siem=rsyslog", "--log=all", f"--config={syslog_ini}")
    assert result.returncode == 0, result.stderr
    received = rsyslog.wait_for(len(expected), start=start, settle=0.05)
    cut = check_syslog(received, expected, RFC5424 if header == "rfc5424" else RFC3164, limit)
    assert cut == cut_count(result)
    hec_server.reset()
    result = run_main("send", "--siem=splunk", "--log=all", f"--config={hec_ini}")
    assert result.returncode == 0, result.stderr
    check_hec(hec_server.events, expected)
