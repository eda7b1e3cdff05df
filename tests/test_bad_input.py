"""Each bad input: one line on stderr, nothing on stdout, no traceback, its own exit code, no files."""
import sqlite3

import pytest

from conftest import run_tool

USAGE, STORE = 2, 3

COMMAND_LINES = [
    (["export", "--log=foo", "--format=leef"],
     "--log=foo: unknown value; use one of scannedlog, detectedlog, assetinfo, all"),
    (["export", "--log=all", "--format=xml"], "--format=xml: unknown value; use one of csv, leef"),
    (["export", "--log=assetinfo", "--assetinfo=apps", "--format=csv"],
     "--assetinfo=apps: unknown kind 'apps'; use a comma list of assetinfo, applicationinfo, updateinfo, or all"),
    (["export", "--log=all", "--format=csv", "--date", "2020-01-01", "31012020"],
     "--date 2020-01-01: not a day; write ddMMyyyy, e.g. 31012020"),
    (["export", "--log=all", "--format=csv", "--date", "31022020", "01032020"],
     "--date 31022020: no such day; write ddMMyyyy, e.g. 31012020"),
    (["export", "--log=all", "--format=csv", "--date", "02012020", "01012020"],
     "--date 02012020 01012020: the first day is after the second; give <from> then <to>"),
    (["export", "--log=all", "--format=csv", "--date", "02012020"],
     "--date needs two days: --date <from> <to>, each ddMMyyyy"),
    (["export", "--log=all", "--format=csv", "--ip=300.1.1.1"],
     "--ip=300.1.1.1: not an IPv4 address; write it like 192.168.0.10"),
    (["export", "--log=all", "--format=csv", "--ip=fe80::1"],
     "--ip=fe80::1: not an IPv4 address; write it like 192.168.0.10"),
    (["export", "--log=all", "--format=csv", "--netmask=10.0.0.0"],
     "--netmask=10.0.0.0: not a network in CIDR form; write it like 192.168.0.0/24"),
    (["export", "--log=all", "--format=csv", "--netmask=10.0.0.0/33"],
     "--netmask=10.0.0.0/33: not a network in CIDR form; write it like 192.168.0.0/24"),
    (["export", "--log=all", "--format=csv", "--ip=1.2.3.4", "--netmask=10.0.0.0/8"],
     "--ip and --netmask cannot be used together; give one of them"),
    (["send", "--siem=splunk", "--log=all", "--startdate=2020-13-01"],
     "--startdate '2020-13-01': not a time; write \"yyyy-MM-dd HH:mm:ss\", e.g. \"2020-07-10 17:01:08\""),
    (["send", "--siem=arcsight", "--log=all"], "--siem=arcsight: unknown value; use one of qradar, splunk, rsyslog"),
    (["export", "--log=all"], "export needs --format; run 'siem_tool -h' for the usage"),
    (["frobnicate"], "the first word must be export, send or check; run 'siem_tool -h' for the usage"),
    (["export", "--log=all", "--format=csv", "--bogus"], "unknown option --bogus; run 'siem_tool -h' for the options"),
]


def assert_one_line(result, code, line):
    assert result.returncode == code, result.stderr
    assert result.stderr == f"siem_tool: error: {line}\n"
    assert result.stdout == ""


@pytest.mark.parametrize("args,line", COMMAND_LINES, ids=[" ".join(a) for a, _ in COMMAND_LINES])
def test_command_line_mistakes(site, args, line):
    result = site.run(*args)
    assert_one_line(result, USAGE, line)
    assert not (site.folder / "export").exists()


def config_case(name, text, line):
    return pytest.param(text, line, id=name)


CONFIGS = [
    config_case("no section", "Startdate=\n",
                "{path} line 1: a setting before any [section]; start the file with [General Setting]"),
    config_case("no General Setting", "[Other]\nx=1\n",
                "{path}: section [General Setting] is missing; add it (see the config.ini shipped with siem_tool)"),
    config_case("facility", "[General Setting]\nFacility = 99\n",
                "{path} [General Setting] Facility: '99' is not allowed; use a whole number from 0 to 23"),
    config_case("severity", "[General Setting]\nEvent2009 = 11\n",
                "{path} [General Setting] Event2009: '11' is not allowed; use a whole number from 1 to 10"),
    config_case("time pattern", "[General Setting]\nLeefTimeFormat = yyyy-MM-dd Q\n",
                "{path} [General Setting] LeefTimeFormat: 'yyyy-MM-dd Q': pattern letters 'Q' are not supported; "
                "use yyyy yy MMMM MMM MM M dd d HH H hh h mm m ss s SSS a EEEE EEE Z XXX and 'quoted text'"),
    config_case("delimiter", "[General Setting]\nLeefDelimiter = =\n",
                "{path} [General Setting] LeefDelimiter: '=' is not allowed; use x09 (TAB) or one punctuation "
                "character such as ^ (x5E), not = or \\"),
    config_case("startdate", "[General Setting]\nStartdate = yesterday\n",
                "{path} [General Setting] Startdate 'yesterday': not a time; write \"yyyy-MM-dd HH:mm:ss\", "
                "e.g. \"2020-07-10 17:01:08\""),
    config_case("duplicate section", "[General Setting]\n[General Setting]\n",
                "{path} line 2: section [General Setting] appears twice; merge the two"),
    config_case("duplicate key", "[General Setting]\nFacility=1\nfacility=2\n",
                "{path} line 3: [General Setting] facility appears twice; keep one"),
]


@pytest.mark.parametrize("text,line", CONFIGS)
def test_config_mistakes(tmp_path, text, line):
    path = tmp_path / "config.ini"
    path.write_text(text, encoding="utf-8")
    result = run_tool("export", "--log=all", "--format=csv", f"--config={path}")
    assert_one_line(result, USAGE, line.format(path=path))


def test_missing_config(tmp_path):
    path = tmp_path / "nothere.ini"
    result = run_tool("export", "--log=all", "--format=csv", f"--config={path}")
    assert_one_line(result, USAGE, f"{path}: config file not found; copy config.ini there or give --config=<file>")


def test_unreadable_config(tmp_path):
    """A folder where the file should be: what an admin meets when --config points wrong."""
    result = run_tool("export", "--log=all", "--format=csv", f"--config={tmp_path}")
    assert_one_line(result, USAGE, f"{tmp_path}: is a folder, not a config file; give --config=<file>")


def test_bad_line_never_echoes_the_token(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text("[General Setting]\n[Splunk]\nToken abcdef-SECRET-token\n", encoding="utf-8")
    for command in (["export", "--log=all", "--format=csv"], ["send", "--siem=splunk", "--log=all"]):
        result = run_tool(*command, f"--config={path}", "-d")
        assert_one_line(result, USAGE, f"{path} line 3: not a 'Key = value' line; fix or comment it out with ;")
        log = (tmp_path / "debug_log_SIEM-tool.txt").read_text("utf-8")
        assert "SECRET" not in log and "SECRET" not in result.stderr


def store_config(tmp_path, folder):
    path = tmp_path / "config.ini"
    path.write_text(f"[General Setting]\nInstalledFolder = {folder}\n", encoding="utf-8")
    return path


def test_store_missing(tmp_path):
    config = store_config(tmp_path, "nowhere")
    result = run_tool("export", "--log=all", "--format=csv", f"--config={config}")
    store = tmp_path / "nowhere" / "Data" / "tmps3log.db"
    assert_one_line(result, STORE, f"log store {store}: not found; set InstalledFolder in config.ini to the "
                                   f"Management Program's folder (the one holding Data\\tmps3log.db)")


def test_store_not_sqlite(tmp_path):
    store = tmp_path / "bad" / "Data" / "tmps3log.db"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"this is not a database\n" * 100)
    result = run_tool("export", "--log=all", "--format=csv", f"--config={store_config(tmp_path, 'bad')}")
    assert_one_line(result, STORE, f"log store {store}: not an SQLite log store; check InstalledFolder in config.ini")


@pytest.mark.parametrize("schema,kind_args,line", [
    ("CREATE TABLE scan_log(id INTEGER PRIMARY KEY, imported_at TEXT)", ["--log=scannedlog"],
     "table scan_log has no column comment (needed for scannedlog)"),
    ("CREATE TABLE other(id INTEGER PRIMARY KEY)", ["--log=detectedlog"],
     "no table detection_log (needed for detectedlog)"),
    ("CREATE TABLE asset_info(id INTEGER PRIMARY KEY)", ["--log=assetinfo", "--assetinfo=updateinfo"],
     "no table update_info (needed for updateinfo)"),
])
def test_store_of_another_schema(tmp_path, schema, kind_args, line):
    store = tmp_path / "other" / "Data" / "tmps3log.db"
    store.parent.mkdir(parents=True)
    db = sqlite3.connect(store)
    db.execute(schema)
    db.close()
    result = run_tool("export", *kind_args, "--format=csv", f"--config={store_config(tmp_path, 'other')}")
    assert_one_line(result, STORE, f"log store {store}: {line}; is this a TMPS3 Management Program log store?")
