"""Records: time patterns, control characters, event ids, config.ini reading; property tests."""
import csv
import datetime as dt
import io
import re
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

import siem_tool as S

JULY = dt.datetime(2020, 7, 10, 17, 1, 8, 123000)


@pytest.mark.parametrize("pattern,text", [
    ("MMM dd yyyy HH:mm:ss", "Jul 10 2020 17:01:08"),
    ("yyyy-MM-dd'T'HH:mm:ss.SSS", "2020-07-10T17:01:08.123"),
    ("yy/M/d h:mm a", "20/7/10 5:01 PM"),
    ("EEEE, MMMM d", "Friday, July 10"),
    ("EEE hh 'o''clock' a", "Fri 05 o'clock PM"),
    ("H m s", "17 1 8"),
    ("''yyyy''", "'2020'"),
])
def test_java_time_patterns(pattern, text):
    assert S.compile_java_time_pattern(pattern)(JULY) == text


def test_zone_letters_follow_this_pc(monkeypatch):
    import time
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert S.compile_java_time_pattern("Z|XXX")(JULY) == "+0900|+09:00"
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
        assert S.compile_java_time_pattern("Z|XXX")(JULY) == "+0000|Z"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("pattern", ["yyyy-MM-dd Q", "G yyyy", "yyyy 'open", "dd-MMM-uuuu", "YYYY"])
def test_unsupported_patterns_refused(pattern):
    with pytest.raises(ValueError):
        S.compile_java_time_pattern(pattern)


@pytest.mark.parametrize("raw,clean", [
    ("a\tb", "a\u2409b"), ("a\nb\rc", "a\u240ab\u240dc"), ("\x00\x1f", "\u2400\u241f"), ("\x7f", "\u2421"),
    ("\x85\x9f", "\ufffd\ufffd"), ("\u2028\u2029", "\ufffd\ufffd"), ("C:\\a|b=c", "C:\\a|b=c"),
    ("製造ライン", "製造ライン"),
])
def test_control_characters(raw, clean):
    assert S.clean_value(raw) == clean


def test_printable_delimiter_never_raw_in_a_value():
    assert S.make_cleaner("^")("a^b\tc") == "a\uff3eb\u2409c"


@pytest.mark.parametrize("status,infected,fixed,event", [
    ("Scan completed", 0, 0, 1000), ("Scan completed", 3, 3, 1001), ("Scan completed", 3, 2, 1002),
    ("Scan canceled", 0, 0, 1003), ("Scan suspended", 1, 0, 1004), (None, None, None, 1002),
    ("Scan completed", "lots", "0", 1002), ("Scan completed", "2", "2", 1001),
])
def test_scan_event_ids(status, infected, fixed, event):
    assert S.scan_event_id(status, infected, fixed) == event


@pytest.mark.parametrize("risk,result,event,sev", [
    (0, "Fixed", 2000, 2), (0, "Unable to fix", 2001, 6), (1, "Fixed at restart", 2006, 5),
    (2, "Ignored", 2011, 7), (2, "Fixed", 2008, 2), (None, "Fixed", 2009, 8), (1, "Quarantined", 2009, 8),
    ("high", "Fixed", 2009, 8), (7, "Fixed", 2009, 8),
])
def test_detection_event_ids_and_default_severity(risk, result, event, sev):
    assert S.detection_event_id(risk, result) == event
    assert S.DEFAULT_SEVERITY[event] == sev


def write(tmp_path, data: bytes):
    path = tmp_path / "config.ini"
    path.write_bytes(data)
    return str(path)


NOTEPAD = ("; 設定ファイル（日本語のコメント）\r\n# another comment\r\n[general SETTING]\r\n"
           "startDATE = 2024-01-02 03:04:05\r\nFACILITY=3\r\n;InstalledFolder = C:\\x\r\n"
           "InstalledFolder = 管理 100%\r\n\r\n[Splunk]\r\nToken = a%b%c\r\n")


@pytest.mark.parametrize("encoding,bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-8", b""), ("utf-16-le", b"\xff\xfe"),
                                          ("utf-16-be", b"\xfe\xff"), ("cp932", b"")])
def test_config_as_windows_editors_save_it(tmp_path, encoding, bom):
    config = S.load_config(write(tmp_path, bom + NOTEPAD.encode(encoding)))
    assert config.startdate == "2024-01-02 03:04:05"
    assert config.facility == 3
    assert config.store_path == str(tmp_path / "管理 100%" / "Data" / "tmps3log.db")
    assert config.sections["splunk"]["token"] == "a%b%c"
    assert (config.codec, config.bom) == (encoding, bom)


@pytest.mark.parametrize("encoding,bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("cp932", b"")])
def test_startdate_rewrite_changes_only_that_value(tmp_path, encoding, bom):
    path = write(tmp_path, bom + NOTEPAD.encode(encoding))
    before = (tmp_path / "config.ini").read_bytes()
    config = S.load_config(path)
    S.rewrite_startdate(config, "2026-12-03 19:40:00")
    after = (tmp_path / "config.ini").read_bytes()
    assert after == before.replace("2024-01-02 03:04:05".encode(encoding), "2026-12-03 19:40:00".encode(encoding))
    assert S.load_config(path).startdate == "2026-12-03 19:40:00"
    assert [p.name for p in tmp_path.iterdir()] == ["config.ini"], "no temporary file left behind"


@pytest.mark.parametrize("text,expected", [
    ("[General Setting]\nStartdate=\n", "[General Setting]\nStartdate=2026-01-01 00:00:00\n"),
    ("[General Setting]\r\nStartdate =   \r\nFacility=1\r\n", "[General Setting]\r\nStartdate =   2026-01-01 00:00:00\r\nFacility=1\r\n"),
    ("[Splunk]\nStartdate = x\n[General Setting]\nFacility=1", "[Splunk]\nStartdate = x\n[General Setting]\nStartdate = 2026-01-01 00:00:00\nFacility=1"),
    ("[General Setting]\n;Startdate = old\nSTARTDATE : 2020-01-01 00:00:00", "[General Setting]\n;Startdate = old\nSTARTDATE : 2026-01-01 00:00:00"),
])
def test_replace_startdate(text, expected):
    assert S.replace_startdate(text, "2026-01-01 00:00:00") == expected


# --- property tests ----------------------------------------------------------
# Any value in any column, through the product's own SQL, renders to one line / one row.

ANY_VALUE = st.one_of(
    st.none(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=40),
    st.text(alphabet=st.sampled_from("\t\r\n\x00\x1f\x7f\x85\u2028\u2029|=\\\"',;^ a日-+@"), max_size=20),
    st.binary(max_size=12),  # invalid UTF-8 in a TEXT column
    st.sampled_from(["2020-07-10 17:01:08", "2020-02-31 00:00:00", "2020-07-10T17:01:08.5", "=1+1",
                     "2021-02-29 10:00:00", "2020-07-10 24:00:00", "0000-01-01 00:00:00", "2020-07-10 17:01:08 "]))


def one_record(spec, draw, tmp_path_factory, style):
    """A store holding one row per table with drawn values; the record the product reads from it,
    and the same record rendered from its values in Python (the path for values to clean)."""
    path = tmp_path_factory.mktemp("one") / "store.db"
    db = sqlite3.connect(path)
    for table, columns in S.required_columns(spec).items():
        columns = sorted(columns | {"id"})
        values = {c: draw(ANY_VALUE) for c in columns}
        values.update(id=1, asset_id=1)
        values.update({c: "{LOG}" for c in columns if c == "log_id"})
        db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
        db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})", [values[c] for c in columns])
    db.commit()
    db.close()
    with S.Store(str(path)) as store:
        reader = S.KindReader(store, spec, S.DEFAULT_SEVERITY, style)
        record, = reader.records()
        row, = store.query(f"SELECT {reader.values_select} FROM {spec.source}", [])
        again = reader.render(row[4 + len(spec.event_exprs):], record.event_id, record.sev)
    return record, again


def one_csv_page(spec, draw, tmp_path_factory):
    path = tmp_path_factory.mktemp("one") / "store.db"
    db = sqlite3.connect(path)
    for table, columns in S.required_columns(spec).items():
        columns = sorted(columns | {"id"})
        values = {c: draw(ANY_VALUE) for c in columns}
        values.update(id=1, asset_id=1)
        values.update({c: "{LOG}" for c in columns if c == "log_id"})
        db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
        db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})", [values[c] for c in columns])
    db.commit()
    db.close()
    with S.Store(str(path)) as store:
        (count, data), = S.KindReader(store, spec, S.DEFAULT_SEVERITY, None).pages()
        text = data.decode("utf-8")
    assert count == 1
    return text


STYLES = [S.LeefStyle("\t", "MMM dd yyyy HH:mm:ss"), S.LeefStyle("^", "EEE d MMM yy h:mm a"),
          S.LeefStyle("|", "yyyy-MM-dd'T'HH:mm:ssXXX")]


@pytest.mark.parametrize("kind", S.KINDS)
@pytest.mark.parametrize("style", STYLES, ids=["tab", "caret", "pipe-zone"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_value_gives_one_leef_line_with_exactly_its_keys(kind, style, data, tmp_path_factory):
    spec = S.KIND_SPECS[kind]
    record, again = one_record(spec, data.draw, tmp_path_factory, style)
    line = record.line
    assert line == again, "SQLite's rendering and Python's give the same bytes"
    assert len(line.splitlines()) == 1 and "\n" not in line and "\r" not in line
    header = f"LEEF:2.0|TrendMicro|PortableSecurity|3.0|{record.event_id}|x{ord(style.delimiter):02X}|"
    assert line.startswith(header)
    attributes = line[len(header):].split(style.delimiter)
    assert [a.split("=", 1)[0] for a in attributes] == [key for key, _r, _e in spec.fields]
    assert not any(ch in line for ch in "\x00\x1f\x7f\x85\u2028\u2029")


@pytest.mark.parametrize("kind", S.KINDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_value_gives_one_csv_row_with_all_columns(kind, data, tmp_path_factory):
    spec = S.KIND_SPECS[kind]
    text = one_csv_page(spec, data.draw, tmp_path_factory)
    assert text.count("\r\n") == 1 and text.count("\n") == 1 and text.count("\r") == 1 and text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 1 and len(rows[0]) == len(S.csv_header(spec))
    for cell in rows[0]:
        assert not cell.startswith(("=", "+", "-", "@")) or re.fullmatch(r"[-+](?:[0-9][0-9.]*(?:e[-+]?[0-9]+)?|Inf)", cell, re.I), cell
        assert not any(ch in cell for ch in "\x00\x1f\x7f\x85\u2028\u2029\t")
