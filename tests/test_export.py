"""`siem_tool export`: golden records, filters on every kind, files and summary lines, the debug log."""
import csv
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GOLDEN, ROOT, Site, output_files, run_tool, write_config

KINDS = ("scannedlog", "detectedlog", "assetinfo", "applicationinfo", "updateinfo")
SUMMARY = re.compile(r"^(\w+): (\d+) records -> (.+)$")


def summary(result):
    """{kind: (count, path)} from the summary lines on stdout."""
    found = {}
    for line in result.stdout.splitlines():
        match = SUMMARY.match(line)
        assert match, f"unexpected output line: {line!r}"
        found[match.group(1)] = (int(match.group(2)), Path(match.group(3)))
    return found


def export(site, fmt, *extra):
    result = site.run("export", "--log=all", f"--format={fmt}", *extra)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return summary(result)


@pytest.mark.parametrize("kind", KINDS)
def test_golden_leef_record_is_byte_equal(site, kind):
    files = export(site, "leef")
    data = files[kind][1].read_bytes()
    golden = (GOLDEN / f"{kind}.leef").read_bytes()
    assert data.startswith(golden), "the guide's sample must be the first record, byte for byte"


@pytest.mark.parametrize("kind", KINDS)
def test_golden_csv_record_is_byte_equal(site, kind):
    files = export(site, "csv")
    data = files[kind][1].read_bytes()
    golden = (GOLDEN / f"{kind}.csv").read_bytes()
    assert data.startswith(golden), "BOM, header row and the guide's sample, CRLF, byte for byte"


def test_export_files_count_and_shape(site):
    files = export(site, "leef")
    assert list(files) == list(KINDS)
    for kind, table in zip(KINDS, ("scan_log", "detection_log", "asset_info", "application_info", "update_info")):
        count, path = files[kind]
        assert count == site.sql(f"SELECT count(*) FROM {table}")[0][0]
        assert re.fullmatch(rf"{kind}_\d{{8}}_\d{{6}}\.leef", path.name)
        assert path.parent == site.folder / "export"
        data = path.read_bytes()
        assert not data.startswith(b"\xef\xbb\xbf"), "LEEF files carry no BOM"
        assert b"\r" not in data
        lines = data.split(b"\n")
        assert lines[-1] == b"" and len(lines) - 1 == count
        assert all(line.startswith(b"LEEF:2.0|TrendMicro|PortableSecurity|3.0|") for line in lines[:-1])


def test_csv_rows_read_back(edge_site):
    files = export(edge_site, "csv")
    for kind, (count, path) in files.items():
        raw = path.read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf")
        assert raw.count(b"\r\n") == count + 1, "one CRLF per row: no value may hold a line break"
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        assert len(rows) == count + 1
        assert {len(row) for row in rows} == {len(rows[0])}


def test_csv_neutralises_formulas_from_endpoints(edge_site):
    files = export(edge_site, "csv")
    rows = list(csv.DictReader(io.StringIO(files["applicationinfo"][1].read_text("utf-8-sig"), newline="")))
    names = {row["name"].split(" #")[0] for row in rows}
    assert "'=HYPERLINK(\"http://example.invalid\",\"update\")" in names
    assert "'+cmd calc" in names
    publishers = {row["publisher"] for row in rows}
    assert "'-vendor" in publishers
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value


def test_japanese_and_separators_survive(edge_site):
    files = export(edge_site, "leef")
    text = files["scannedlog"][1].read_text("utf-8")
    assert "hostName=製造ライン-PC01\t" in text
    assert "hostName=HMI|LINE=2\t" in text
    assert "userName=o'brien \"ops\"\t" in text
    assert "hostDomain=PLANT\\EAST\t" in text


def test_empty_selection_still_writes_and_says_zero(site):
    result = site.run("export", "--log=scannedlog", "--format=csv", "--hostname=no-such-host")
    assert result.returncode == 0, result.stderr
    (count, path), = summary(result).values()
    assert count == 0
    assert path.read_bytes().startswith(b"\xef\xbb\xbfdevTime,sev,eventId,")
    assert path.read_bytes().count(b"\r\n") == 1


def test_output_option_and_no_partial_files(site, tmp_path):
    out = tmp_path / "out folder 出力"
    result = site.run("export", "--log=detectedlog", "--format=leef", f"--output={out}")
    assert result.returncode == 0, result.stderr
    (count, path), = summary(result).values()
    assert path.parent == out
    assert [p.name for p in out.iterdir()] == [path.name]


def test_two_exports_in_one_second_do_not_overwrite(site):
    first = summary(site.run("export", "--log=scannedlog", "--format=leef"))
    second = summary(site.run("export", "--log=scannedlog", "--format=leef"))
    assert first["scannedlog"][1] != second["scannedlog"][1]
    assert first["scannedlog"][1].exists() and second["scannedlog"][1].exists()


def test_options_before_the_command_word(site):
    result = run_tool("--config", site.config, "export", "--log=scannedlog", "--format=leef")
    assert result.returncode == 0, result.stderr
    assert summary(result)["scannedlog"][0] == site.sql("SELECT count(*) FROM scan_log")[0][0]


def test_runs_from_another_working_directory(site, tmp_path):
    """Task Scheduler starts in System32: relative paths count from config.ini's folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = site.run("export", "--log=scannedlog", "--format=leef", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert summary(result)["scannedlog"][1].parent == site.folder / "export"
    assert list(elsewhere.iterdir()) == []


def test_store_bytes_unchanged(site):
    before = site.store_hash()
    export(site, "leef")
    export(site, "csv")
    assert site.store_hash() == before


def test_japanese_locale_keeps_english_month_names(site):
    env = {"LC_ALL": "ja_JP.UTF-8", "LANG": "ja_JP.UTF-8", "LANGUAGE": "ja"}
    check = subprocess.run([sys.executable, "-c", "import locale,time; locale.setlocale(locale.LC_ALL, '');"
                            "print(time.strftime('%b', time.strptime('07', '%m')))"],
                           capture_output=True, text=True, env={**os.environ, **env})
    assert check.returncode == 0 and check.stdout.strip() != "Jul", "the Japanese locale must be installed"
    result = site.run("export", "--log=scannedlog", "--format=leef", env=env)
    assert result.returncode == 0, result.stderr
    first = summary(result)["scannedlog"][1].read_text("utf-8").splitlines()[0]
    assert "devTime=Jul 10 2020 17:01:08\t" in first


def test_leef_time_format_and_delimiter_from_config(site):
    site.configure(general={"LeefTimeFormat": "EEE, d MMMM yy hh:mm:ss a 'at' yyyy-MM-dd", "LeefDelimiter": "^"})
    result = site.run("export", "--log=scannedlog", "--format=leef")
    assert result.returncode == 0, result.stderr
    first = summary(result)["scannedlog"][1].read_text("utf-8").splitlines()[0]
    assert first.startswith("LEEF:2.0|TrendMicro|PortableSecurity|3.0|1000|x5E|devTime=Fri, 10 July 20 05:01:08 PM at 2020-07-10^")
    assert "^devTimeFormat=EEE, d MMMM yy hh:mm:ss a 'at' yyyy-MM-dd^" in first
    assert "\t" not in first


def test_severity_from_config(site):
    site.configure(general={"Event1000": "9", "Event2008": "10"})
    files = export(site, "leef")
    assert files["scannedlog"][1].read_text().startswith("LEEF:2.0|TrendMicro|PortableSecurity|3.0|1000|x09|devTime=Jul 10 2020 17:01:08\tdevTimeFormat=MMM dd yyyy HH:mm:ss\tsev=9\t")
    assert "\tsev=10\teventId=2008\t" in files["detectedlog"][1].read_text().splitlines()[0]


def test_debug_log(site):
    site.configure(sections={"Splunk": {"ServerAddress": "127.0.0.1", "Token": "SECRET-TOKEN-1234"}})
    result = site.run("export", "--log=scannedlog", "--format=leef", "-d")
    assert result.returncode == 0, result.stderr
    text = (site.folder / "debug_log_SIEM-tool.txt").read_text("utf-8")
    assert "arguments" in text and "--log=scannedlog" in text
    assert str(site.store) in text
    assert "SELECT" in text and "FROM scan_log" in text
    assert "scannedlog: 302 records in" in text
    assert "SECRET-TOKEN-1234" not in text and "********" in text
    again = site.run("export", "--log=scannedlog", "--format=leef", "--debug")
    assert again.returncode == 0
    assert (site.folder / "debug_log_SIEM-tool.txt").read_text("utf-8").count("arguments") == 2, "appended"


def test_help_and_version():
    result = run_tool("-h")
    assert result.returncode == 0
    assert "siem_tool export --log=<log> --format=<format>" in result.stdout
    assert "siem_tool send --siem=<siem> --log=<log>" in result.stdout
    result = run_tool("--version")
    assert result.returncode == 0 and re.fullmatch(r"siem_tool \d+\.\d+\.\d+\n", result.stdout)
    assert run_tool("-v").stdout == result.stdout


def test_read_waits_for_a_writer_holding_the_lock(site):
    """Another process holds an exclusive lock for 3 s (rollback journal): the export waits."""
    db = sqlite3.connect(site.store)
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"db = sqlite3.connect({str(site.store)!r}, isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "db.execute(\"UPDATE scan_log SET comment = comment WHERE id = 1\")\n"
        "print('locked', flush=True)\n"
        "time.sleep(3)\n"
        "db.execute('COMMIT')\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        import time
        started = time.monotonic()
        result = site.run("export", "--log=scannedlog", "--format=leef")
        waited = time.monotonic() - started
    finally:
        holder.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    assert summary(result)["scannedlog"][0] == 302
    assert waited > 1.5, "the export must have met the lock (and waited for it)"


def test_read_while_a_wal_writer_is_in_a_transaction(site):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, time\n"
        f"db = sqlite3.connect({str(site.store)!r}, isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "db.execute(\"DELETE FROM scan_log WHERE id > 10\")\n"
        "print('locked', flush=True)\n"
        "time.sleep(3)\n"
        "db.execute('ROLLBACK')\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = site.run("export", "--log=scannedlog", "--format=leef")
    finally:
        holder.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    assert summary(result)["scannedlog"][0] == 302, "uncommitted changes are not seen"


def test_demo_config_runs_on_the_bundled_store(tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(ROOT / "demo", demo, ignore=shutil.ignore_patterns("export", "sent", "*.state.json"))
    result = run_tool("export", "--log=all", "--format=leef", "--config", demo / "config.ini")
    assert result.returncode == 0, result.stderr
    found = summary(result)
    assert found["scannedlog"][0] >= 300 and found["applicationinfo"][0] > 0
    golden = (GOLDEN / "scannedlog.leef").read_bytes()
    assert found["scannedlog"][1].read_bytes().startswith(golden)
