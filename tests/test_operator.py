"""What the admin meets: `check`, `send --dry-run`, the progress bar, a cp932 console, the offline zipapp."""
import os
import pty
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import GOLDEN, ROOT, TOOL
from test_send import qradar_config, qradar_certs, rsyslog_config, sent_summary, splunk_config  # noqa: F401
from tests.peers.hec import TOKEN


# --- check -------------------------------------------------------------------

def test_check_tls_with_the_right_ca(site, rsyslog):
    rsyslog_config(site, rsyslog.tls_port, "TLS", CertFile=rsyslog.ca)
    result = site.run("check", "--siem=rsyslog")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"config:    {site.config}" in out and f"log store: {site.store}" in out
    assert "waiting:   scannedlog: 302 records (from the oldest record)" in out
    assert re.search(r"  TLS:       TLSv1\.[23], ", out)
    assert re.search(r"  SHA-256:   ([0-9A-F]{2}:){31}[0-9A-F]{2}\n", out)
    assert "  names:     127.0.0.1" in out
    assert "  verification: OK (issued for 127.0.0.1)" in out
    assert out.endswith("result:    all checks passed\n")


def test_check_qradar_pinned_certificate(site, rsyslog_factory, qradar_certs):
    qradar = qradar_certs["self_signed"]
    server = rsyslog_factory(qradar.cert, qradar.key)
    qradar_config(site, server.tls_port, qradar.cert)
    result = site.run("check", "--siem=qradar")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  names:     qradar.example.invalid" in result.stdout
    assert "  verification: OK (exactly the certificate in CertFile)" in result.stdout
    assert server.received() == [], "check sends no log"


def test_check_wrong_certificate(site, rsyslog_factory, qradar_certs):
    wrong = qradar_certs["unrelated"]
    server = rsyslog_factory(wrong.cert, wrong.key)
    qradar_config(site, server.tls_port, qradar_certs["self_signed"].cert)
    result = site.run("check", "--siem=qradar")
    print(result.stdout + result.stderr)
    assert result.returncode == 4
    assert "  names:     127.0.0.1, localhost" in result.stdout, "the certificate is shown even when refused"
    assert "  verification FAILED: the server's certificate is neither in nor signed by CertFile" in result.stdout
    assert result.stderr.startswith("siem_tool: error: QRadar 127.0.0.1:") and result.stderr.count("\n") == 1
    assert "copy the server's certificate (QRadar: syslog-tls.cert) to CertFile" in result.stderr


def test_check_hec_good_and_bad_token(site, hec):
    splunk_config(site, hec)
    good = site.run("check", "--siem=splunk")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "  health:    HTTP 200 HEC is healthy" in good.stdout
    assert "  token:     accepted" in good.stdout
    splunk_config(site, hec, token="00000000-0000-0000-0000-000000000000")
    bad = site.run("check", "--siem=splunk")
    print(bad.stdout + bad.stderr)
    assert bad.returncode == 4
    assert "  token:     REFUSED" in bad.stdout
    assert bad.stderr == (f"siem_tool: error: Splunk HEC 127.0.0.1:{hec.port}: HEC refused the data with code 4 "
                          f"\"Invalid token\"; the token is not known to Splunk; copy the right Token into [Splunk]\n")
    assert "00000000-0000-0000-0000-000000000000" not in bad.stdout + bad.stderr
    assert hec.events == [], "check indexes nothing"


def test_check_tcp_refused_and_udp(site, rsyslog):
    rsyslog_config(site, rsyslog.udp_port, "UDP")
    udp = site.run("check", "--siem=rsyslog")
    assert udp.returncode == 0 and "UDP cannot confirm delivery" in udp.stdout
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    rsyslog_config(site, free, "TCP")
    tcp = site.run("check", "--siem=rsyslog")
    assert tcp.returncode == 4
    assert tcp.stderr == (f"siem_tool: error: RSyslog 127.0.0.1:{free} (TCP): connection refused; check "
                          f"ServerAddress/ServerPort and that the server listens\n")


def test_check_reports_a_missing_store(site, rsyslog):
    rsyslog_config(site, rsyslog.tcp_port, "TCP")
    site.store.unlink()
    result = site.run("check", "--siem=rsyslog")
    assert result.returncode == 3
    assert "TCP:       connected" in result.stdout, "the SIEM is still checked"


# --- dry run -----------------------------------------------------------------

def shown_messages(stdout):
    return [line.split(": ", 1)[1] for line in stdout.splitlines() if re.match(r"  \w+ #\d+: ", line)]


def without_time(message):
    """RFC 5424 header without its TIMESTAMP, which differs between two runs."""
    return re.sub(r"^(<\d+>1) \S+ ", r"\1 - ", message)


def test_dry_run_shows_the_bytes_a_send_delivers(edge_site, rsyslog):
    config = rsyslog_config(edge_site, rsyslog.tcp_port, "TCP")
    before = config.read_bytes()
    start = rsyslog.mark()
    dry = edge_site.run("send", "--siem=rsyslog", "--log=all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"^scannedlog: 402 records would be sent \(from the oldest record\), 0 would be cut; "
                     r"dry run: nothing sent$", dry.stdout, re.M)
    time.sleep(0.5)
    assert rsyslog.received(start) == [], "a dry run sends nothing"
    assert config.read_bytes() == before and not (edge_site.folder / "config.state.json").exists()
    assert not (edge_site.folder / "sent").exists()
    shown = shown_messages(dry.stdout)
    assert len(shown) == 15 and all(m.endswith("\\n") for m in shown)
    real = edge_site.run("send", "--siem=rsyslog", "--log=all")
    assert real.returncode == 0, real.stderr
    total = sum(n for n, _ in sent_summary(real).values())
    received = rsyslog.wait_for(total, start=start)
    from siem_tool import visible
    firsts = {}
    for line in received:
        kind = line.split(b" ")[5].decode()
        firsts.setdefault(kind, []).append(without_time(visible(line + b"\n")))
    expected = [m for kind in ("scannedlog", "detectedlog", "assetinfo", "applicationinfo", "updateinfo")
                for m in firsts[kind][:3]]
    assert [without_time(m) for m in shown] == expected


def test_dry_run_warns_about_messages_it_would_cut(edge_site, rsyslog):
    rsyslog_config(edge_site, rsyslog.udp_port, "UDP", MaxMessageSize=900)
    dry = edge_site.run("send", "--siem=rsyslog", "--log=scannedlog", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    warnings = re.findall(r"^  warning: scannedlog id \d+ is longer than MaxMessageSize \(900 bytes\) and would "
                          r"be cut$", dry.stdout, re.M)
    summary = re.search(r"^scannedlog: 402 records would be sent .*, (\d+) would be cut;", dry.stdout, re.M)
    assert len(warnings) == int(summary.group(1)) > 0


def test_dry_run_for_hec_shows_envelopes_and_hides_the_token(site, hec):
    splunk_config(site, hec)
    dry = site.run("send", "--siem=splunk", "--log=scannedlog", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    first = shown_messages(dry.stdout)[0]
    assert first.startswith('{"time":1594400468,') or first.startswith('{"time":')
    assert '"index":"scannedlog"' in first and '"event":"<166>LEEF:2.0|TrendMicro' in first
    assert TOKEN not in dry.stdout + dry.stderr
    assert hec.requests == []


# --- progress and console ------------------------------------------------------

def test_progress_bar_only_on_a_terminal(site):
    quiet = site.run("export", "--log=all", "--format=leef")
    assert quiet.returncode == 0 and quiet.stderr == ""
    main, secondary = pty.openpty()
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    process = subprocess.Popen([sys.executable, str(TOOL), "export", "--log=assetinfo",
                                "--assetinfo=applicationinfo", "--format=leef", "--config", str(site.config)],
                               stdout=secondary, stderr=subprocess.PIPE, env=env)
    os.close(secondary)
    _, err = process.communicate(timeout=60)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert process.returncode == 0
    assert b"applicationinfo: " in output and b" records -> " in output, "the summary line still comes"
    assert re.search(rb"applicationinfo: +\d+%\|", err) or b"records/s" in err, err[-300:]


def test_cp932_console_does_not_crash(edge_site, tmp_path):
    out = tmp_path / "출력 Ausgabe"    # Hangul: not in cp932
    result = edge_site.run("export", "--log=scannedlog", "--format=leef", f"--output={out}",
                           env={"PYTHONIOENCODING": "cp932"})
    assert result.returncode == 0, result.stderr
    assert "?? Ausgabe" in result.stdout
    assert list(out.iterdir())[0].read_text("utf-8").count("\n") == 402


def test_cp932_console_with_japanese_host_names(edge_site, rsyslog):
    rsyslog_config(edge_site, rsyslog.tcp_port, "TCP")
    result = subprocess.run([sys.executable, str(TOOL), "send", "--siem=rsyslog", "--log=scannedlog", "--dry-run",
                             "--config", str(edge_site.config), "--startdate=2000-01-01 00:00:00"],
                            capture_output=True, env=dict(os.environ, PYTHONIOENCODING="cp932"))
    assert result.returncode == 0, result.stderr
    result.stdout.decode("cp932")


# --- offline single file ---------------------------------------------------------

@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    target = tmp_path_factory.mktemp("pyz") / "siem_tool.pyz"
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_pyz.py"), "--output", str(target)], check=True)
    return target


def test_zipapp_runs_in_a_clean_environment(pyz, tmp_path):
    """No packages installed, no network: the archive carries what it needs."""
    venv = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {"PATH": "/usr/bin:/bin", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    assert subprocess.run([str(python), "-c", "import requests"], env=env, capture_output=True).returncode != 0
    site = tmp_path / "site"
    shutil.copytree(ROOT / "demo", site, ignore=shutil.ignore_patterns("export", "sent", "*.state.json"))
    shutil.copy2(pyz, site / "siem_tool.pyz")
    # config.ini beside the archive is the default, as beside siem_tool.py
    result = subprocess.run([str(python), "siem_tool.pyz", "export", "--log=all", "--format=leef"],
                            cwd=site, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" records -> ") == 5
    first = next((site / "export").glob("scannedlog_*.leef")).read_bytes()
    assert first.startswith((GOLDEN / "scannedlog.leef").read_bytes())
    failing = subprocess.run([str(python), str(site / "siem_tool.pyz"), "export", "--log=foo", "--format=csv"],
                             env=env, capture_output=True, text=True)
    assert failing.returncode == 2
    assert failing.stderr == ("siem_tool: error: --log=foo: unknown value; use one of scannedlog, detectedlog, "
                              "assetinfo, all\n")
