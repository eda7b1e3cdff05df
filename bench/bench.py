#!/usr/bin/env python3
"""Benchmark siem_tool against the floors it is measured by (SPEC section 8).

Run it with the project's virtual environment (requests, trustme and the test
peers in tests/peers/), from any folder:

    .venv/bin/python bench/bench.py                 # 200k-scan store, 5 runs per pair
    .venv/bin/python bench/bench.py --quick         # 20k-scan store, 3 runs per pair
    .venv/bin/python bench/bench.py --only send_tcp,send_tls --runs 7

It needs sqlite3, logger, openssl and rsyslogd (tests/setup.sh installs them).
Stores are built with shared/store/make_store.py (set SIEM_TOOL_SHARED when
shared/ is not beside this checkout) and kept in bench/cache/stores/ between
runs. Each pair works in bench/cache/work/<pair>/ (config.ini, the store under
"Management Program/Data", its own rsyslogd or HEC server), removed afterwards.

Each pair runs siem_tool (A) and its baseline (B) once untimed to warm up (and
to capture the baseline's ready-made input), then --runs times, alternating A
and B. Progress goes to stderr; stdout gets a table with the median, min and
max of A, of B and of the per-run ratio A/B, in the pair's unit:

    s      wall-clock seconds                  ratio = A/B, goal met when <= goal
    MB     peak RSS of the process (wait4)     ratio = A/B, goal met when <= goal
    rec/s  records per second, end to end      ratio = A/B, goal met when >= goal

followed by one line per pair, for scripts, judged on the median ratio:

    ratio <name> <median ratio> goal <goal> PASS|MISS

send_udp_loss has no baseline; its line reads

    ratio send_udp_loss <lossless runs>/<runs>@<median rate>/s goal <runs>/<runs>@20000/s PASS|MISS

PASS when no run lost a record and the median rate was at least 20,000
records/s. The last line is "N of M goals met".

The pairs (a send is end to end: store read, render, send, until the receiver
has every record; the send baselines get their lines ready-made):

    export_csv_scan     export scannedlog CSV      vs sqlite3 -csv of scan_log
    export_csv_app      export applicationinfo CSV vs sqlite3 -csv of application_info
    export_leef_scan    export scannedlog LEEF     vs sqlite3 -csv of scan_log
    export_leef_detect  export detectedlog LEEF    vs sqlite3 -csv of siem_tool's detection/scan join
    memory_flat         peak RSS of export --log=all LEEF, big store vs small store
    send_tcp            send rsyslog TCP           vs logger -T -f of the LEEF lines
    send_tls            send qradar (TLS)          vs openssl s_client fed the same syslog lines
    send_udp_loss       send rsyslog UDP at the default UdpRate: lost records and rate
    send_hec            send splunk                vs requests.post of one event per POST, the
                                                      naive client (a new connection each, no gzip;
                                                      timed on the first 5,000 events)
    send_hec_ceiling    send splunk                vs a keep-alive requests Session posting the
                                                      same events as pre-built bodies of 1 MB,
                                                      gzipped beforehand (level 1, as siem_tool)

Every send sends all scannedlog records of the store (--startdate 2000-01-01);
siem_tool's summary count and the receiver's count must both equal the
store's row count, or the bench stops with an error (UDP: loss is the measure).
The HEC stand-in here counts envelopes by their "event": key (which cannot
occur inside a JSON string) and stores nothing, so it keeps up with the client.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import re
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import requests

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIEM_TOOL_SHARED", ROOT.parent / "shared"))
MAKE_STORE = SHARED / "store" / "make_store.py"
TOOL = ROOT / "siem_tool.py"
CACHE = ROOT / "bench" / "cache"

sys.path.insert(0, str(ROOT))
from tests.peers import certs  # noqa: E402  (the test peers live in the repository)
from tests.peers.rsyslog import Rsyslog  # noqa: E402

TOKEN = "0be0c4a1-3f1e-4b6e-9a57-7d3c1b2e9f10"
STARTDATE = "2000-01-01 00:00:00"          # before any import: every run sends every record
SEND_LINE = re.compile(r"^(\w+): (\d+) records sent", re.MULTILINE)
EXPORT_LINE = re.compile(r"^(\w+): (\d+) records -> ", re.MULTILINE)
DETECT_JOIN = ("SELECT * FROM detection_log d LEFT JOIN scan_log s ON s.log_id = d.log_id "
               "ORDER BY d.id")        # the join of siem_tool's KindSpec for detectedlog
POLL = 0.005                           # seconds between looks at the receiver's count
ARRIVAL_TIMEOUT = 300.0
UDP_QUIET = 1.0                        # UDP: no new line for this long means the rest is lost
UDP_MIN_RATE = 20_000
HEC_SAMPLE = 5_000
HEC_BODY_BYTES = 1_000_000
HEC_GZIP_LEVEL = 1


class BenchError(RuntimeError):
    """A run failed or its counts do not add up: the numbers would mean nothing."""


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- modes and stores ---------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    big: Tuple[str, ...]      # make_store.py arguments of the store every pair uses
    small: Tuple[str, ...]    # the smaller store memory_flat compares with
    runs: int
    udp_runs: int


FULL = Mode(("--scans", "200000", "--hosts", "2000"), ("--scans", "20000", "--hosts", "200"), 5, 10)
QUICK = Mode(("--scans", "20000", "--hosts", "200"), ("--scans", "2000", "--hosts", "20"), 3, 3)


def cached_store(args: Sequence[str]) -> Path:
    """The store make_store.py builds with these arguments, built once into bench/cache/stores/."""
    name = "store" + "".join(a.replace("--", "-") for a in args) + ".db"
    path = CACHE / "stores" / name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(name + ".part")
    for leftover in path.parent.glob(name + ".part*"):
        leftover.unlink()
    progress(f"building {name} with {MAKE_STORE} {' '.join(args)}")
    run_checked([sys.executable, str(MAKE_STORE), str(partial), *args])
    os.replace(partial, path)
    return path


def table_count(store: Path, table: str) -> int:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


# --- processes ------------------------------------------------------------------

def run_checked(argv: Sequence[str], stdout=subprocess.PIPE) -> str:
    """Run to the end; its stdout as text (when piped); a failure stops the bench."""
    result = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} exited with {result.returncode}: "
                         f"{result.stderr.decode(errors='replace')[-2000:]}")
    return result.stdout.decode("utf-8", "replace") if stdout == subprocess.PIPE else ""


def timed(argv: Sequence[str], stdout=subprocess.DEVNULL) -> float:
    started = time.perf_counter()
    run_checked(argv, stdout=stdout)
    return time.perf_counter() - started


def peak_rss_mb(argv: Sequence[str]) -> float:
    """Peak resident memory of one process (its own ru_maxrss, from wait4), in MB."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if proc.returncode != 0:
            err.seek(0)
            raise BenchError(f"{argv} exited with {proc.returncode}: {err.read()[-2000:]!r}")
    return usage.ru_maxrss / 1024


def empty_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


# --- a site: config.ini and a store, as an admin's folder ---------------------------

class Site:
    """A work folder with config.ini and the store under "Management Program/Data"."""

    def __init__(self, folder: Path, store: Path):
        empty_folder(folder)
        self.folder = folder
        self.store = folder / "Management Program" / "Data" / "tmps3log.db"
        self.store.parent.mkdir(parents=True)
        try:
            os.link(store, self.store)       # the store is only read: no need for a copy
        except OSError:
            shutil.copyfile(store, self.store)
        self.config = folder / "config.ini"
        self.configure({})

    def configure(self, sections: Dict[str, Dict[str, object]]) -> None:
        """config.ini with InstalledFolder relative to it and these SIEM sections."""
        lines = ["[General Setting]", "Startdate =", "InstalledFolder = Management Program"]
        for name, values in sections.items():
            lines.append(f"[{name}]")
            lines += [f"{key} = {value}" for key, value in values.items()]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def tool(self, *args: str) -> List[str]:
        return [sys.executable, str(TOOL), *args, f"--config={self.config}"]

    def send(self, siem: str) -> int:
        """One send of every scannedlog record; the count siem_tool reports (its local copy removed)."""
        out = run_checked(self.tool("send", f"--siem={siem}", "--log=scannedlog",
                                    f"--startdate={STARTDATE}"))
        shutil.rmtree(self.folder / "sent", ignore_errors=True)
        return sum(int(n) for _kind, n in SEND_LINE.findall(out))

    def sent_lines(self, siem: str) -> Path:
        """Send once and keep siem_tool's local copy: the LEEF lines, ready-made."""
        run_checked(self.tool("send", f"--siem={siem}", "--log=scannedlog", f"--startdate={STARTDATE}"))
        copy = self.folder / "lines.leef"
        with open(copy, "wb") as out:
            for path in sorted((self.folder / "sent").glob("scannedlog_*.leef")):
                out.write(path.read_bytes())
        shutil.rmtree(self.folder / "sent")
        return copy


# --- measurements ---------------------------------------------------------------

@dataclass
class Pair:
    """A pair to measure: siem_tool (A) against a baseline (B), A/B judged against a goal."""
    name: str
    unit: str                                  # "s", "MB" or "rec/s"
    goal: float
    setup: Callable[["Bench"], "contextlib.AbstractContextManager"]

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "rec/s"


@dataclass
class Result:
    pair: Pair
    a: List[float] = field(default_factory=list)
    b: List[float] = field(default_factory=list)

    @property
    def ratios(self) -> List[float]:
        return [x / y for x, y in zip(self.a, self.b)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def met(self) -> bool:
        if self.pair.higher_is_better:
            return self.ratio >= self.pair.goal
        return self.ratio <= self.pair.goal

    def line(self) -> str:
        return (f"ratio {self.pair.name} {self.ratio:.3g} goal {self.pair.goal:g} "
                f"{'PASS' if self.met else 'MISS'}")


@dataclass
class UdpResult:
    runs: int
    lost: List[int] = field(default_factory=list)
    rates: List[float] = field(default_factory=list)

    @property
    def lossless(self) -> int:
        return sum(1 for n in self.lost if n == 0)

    @property
    def met(self) -> bool:
        return self.lossless == self.runs and statistics.median(self.rates) >= UDP_MIN_RATE

    def line(self) -> str:
        return (f"ratio send_udp_loss {self.lossless}/{self.runs}@{statistics.median(self.rates):.0f}/s "
                f"goal {self.runs}/{self.runs}@{UDP_MIN_RATE}/s {'PASS' if self.met else 'MISS'}")


class Bench:
    """What the pairs share: the mode, the stores and a work folder per pair."""

    def __init__(self, mode: Mode, runs: int):
        self.mode, self.runs = mode, runs
        self.work = CACHE / "work"

    @property
    def big_store(self) -> Path:
        return cached_store(self.mode.big)

    @property
    def small_store(self) -> Path:
        return cached_store(self.mode.small)

    def site(self, name: str, store: Optional[Path] = None) -> Site:
        return Site(self.work / name, store or self.big_store)

    def measure(self, pair: Pair) -> Result:
        result = Result(pair)
        with pair.setup(self) as (a, b):
            progress(f"{pair.name}: warm-up")
            a(), b()
            for run in range(1, self.runs + 1):
                result.a.append(a())
                result.b.append(b())
                progress(f"{pair.name}: run {run}/{self.runs}: A {result.a[-1]:.4g} {pair.unit}, "
                         f"B {result.b[-1]:.4g} {pair.unit}, A/B {result.ratios[-1]:.3g}")
        shutil.rmtree(self.work / pair.name, ignore_errors=True)
        return result


# --- export pairs -----------------------------------------------------------------

def export_pair(name: str, tool_args: Sequence[str], sql: str):
    """siem_tool's export against sqlite3's own CSV export of the same rows."""
    @contextlib.contextmanager
    def setup(bench: Bench) -> Iterator[tuple]:
        site = bench.site(name)
        out = site.folder / "out"

        def a() -> float:
            empty_folder(out)
            return timed(site.tool("export", *tool_args, f"--output={out}"))

        def b() -> float:
            empty_folder(out)
            with open(out / "baseline.csv", "wb") as f:
                return timed(["sqlite3", "-csv", "-header", site.store, sql], stdout=f)
        yield a, b
        shutil.rmtree(out, ignore_errors=True)
    return setup


@contextlib.contextmanager
def memory_flat(bench: Bench) -> Iterator[tuple]:
    """Peak RSS of export --log=all on the big store against the same on the small one."""
    big, small = bench.site("memory_flat/big"), bench.site("memory_flat/small", bench.small_store)

    def measure(site: Site) -> Callable[[], float]:
        def run() -> float:
            empty_folder(site.folder / "out")
            rss = peak_rss_mb(site.tool("export", "--log=all", "--format=leef",
                                        f"--output={site.folder / 'out'}"))
            shutil.rmtree(site.folder / "out")
            return rss
        return run
    yield measure(big), measure(small)


# --- syslog pairs (a real rsyslogd) ----------------------------------------------------

@contextlib.contextmanager
def rsyslog_site(bench: Bench, name: str) -> Iterator[Tuple[Site, Rsyslog, int]]:
    """A site, a private rsyslogd with a CA-signed certificate for 127.0.0.1, and the record count."""
    site = bench.site(name)
    files = certs.ca_signed(site.folder, ["127.0.0.1"])
    with Rsyslog(site.folder / "rsyslog", files.cert, files.key, ca=files.ca) as server:
        yield site, server, table_count(site.store, "scan_log")


def wait_for_lines(server: Rsyslog, target: int) -> None:
    """Until rsyslog has written `target` lines in all; fail if it does not get there."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while server.line_count() < target:
        if time.monotonic() > deadline:
            raise BenchError(f"rsyslog wrote {server.line_count()} of {target} lines in "
                             f"{ARRIVAL_TIMEOUT:g} s: {server.log()[-1000:]}")
        time.sleep(POLL)


def check_exact(server: Rsyslog, target: int, what: str) -> None:
    """A moment after the last expected line: no extra line may follow (untimed)."""
    time.sleep(0.1)
    if server.line_count() != target:
        raise BenchError(f"{what}: rsyslog has {server.line_count()} lines, expected {target}")


def timed_delivery(server: Rsyslog, expected: int, what: str, start: Callable[[], object]) -> float:
    """Seconds from start() until rsyslog has written `expected` more lines; start() may return
    a process to end afterwards (a client that does not end by itself)."""
    target = server.line_count() + expected
    started = time.perf_counter()
    proc = start()
    wait_for_lines(server, target)
    seconds = time.perf_counter() - started
    if isinstance(proc, subprocess.Popen):
        proc.terminate()
        proc.wait()
    check_exact(server, target, what)
    return seconds


def tool_sender(site: Site, server: Rsyslog, siem: str, expected: int) -> Callable[[], float]:
    """siem_tool's send, end to end, as a rate; its own count must be the store's."""
    def start() -> None:
        sent = site.send(siem)
        if sent != expected:
            raise BenchError(f"siem_tool send --siem={siem} reported {sent} records, the store has {expected}")

    def run() -> float:
        return expected / timed_delivery(server, expected, f"siem_tool send --siem={siem}", start)
    return run


@contextlib.contextmanager
def send_tcp(bench: Bench) -> Iterator[tuple]:
    with rsyslog_site(bench, "send_tcp") as (site, server, expected):
        site.configure({"RSyslog": {"ServerAddress": "127.0.0.1", "ServerPort": server.tcp_port,
                                    "Protocol": "TCP"}})
        lines = site.sent_lines("rsyslog")
        wait_for_lines(server, expected)
        logger = ["logger", "-T", "-n", "127.0.0.1", "-P", str(server.tcp_port),
                  "--rfc5424=notq", "--size", "65536", "-f", str(lines)]

        def baseline() -> float:
            return expected / timed_delivery(server, expected, "logger", lambda: run_checked(logger))
        yield tool_sender(site, server, "rsyslog", expected), baseline


@contextlib.contextmanager
def send_tls(bench: Bench) -> Iterator[tuple]:
    with rsyslog_site(bench, "send_tls") as (site, server, expected):
        site.configure({"QRadar": {"ServerAddress": "127.0.0.1", "ServerPort": server.tls_port,
                                   "CertFile": server.ca}})
        start = server.line_count()
        tool_sender(site, server, "qradar", expected)()
        lines = site.folder / "lines.syslog"   # what siem_tool sent, headers and all
        lines.write_bytes(b"".join(line + b"\n" for line in server.received(start)))
        s_client = ["openssl", "s_client", "-quiet", "-nocommands", "-connect",
                    f"127.0.0.1:{server.tls_port}"]

        def start_s_client() -> subprocess.Popen:
            # -quiet implies -ign_eof: s_client stays connected after its input; ended once all arrived.
            with open(lines, "rb") as f:
                return subprocess.Popen(s_client, stdin=f, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

        def baseline() -> float:
            return expected / timed_delivery(server, expected, "openssl s_client", start_s_client)
        yield tool_sender(site, server, "qradar", expected), baseline


def measure_udp(bench: Bench, runs: int) -> UdpResult:
    result = UdpResult(runs)
    with rsyslog_site(bench, "send_udp_loss") as (site, server, expected):
        site.configure({"RSyslog": {"ServerAddress": "127.0.0.1", "ServerPort": server.udp_port,
                                    "Protocol": "UDP"}})
        for run in range(1, runs + 1):
            lost, rate = udp_run(site, server, expected)
            result.lost.append(lost)
            result.rates.append(rate)
            progress(f"send_udp_loss: run {run}/{runs}: {expected} records, {lost} lost, {rate:.0f} records/s")
    shutil.rmtree(bench.work / "send_udp_loss", ignore_errors=True)
    return result


def udp_run(site: Site, server: Rsyslog, expected: int) -> Tuple[int, float]:
    """(records lost, records/s from start to the last line written or siem_tool's exit)."""
    before = server.line_count()
    started = time.perf_counter()
    sent = site.send("rsyslog")
    ended = time.perf_counter()
    if sent != expected:
        raise BenchError(f"siem_tool send over UDP reported {sent} records, the store has {expected}")
    seen, changed = server.line_count(), time.perf_counter()
    while seen - before < expected and time.perf_counter() - changed < UDP_QUIET:
        time.sleep(POLL)
        now = server.line_count()
        if now != seen:
            seen, changed = now, time.perf_counter()
    return expected - (seen - before), expected / (max(ended, changed) - started)


# --- HEC pairs (a counting HEC-compatible server) ----------------------------------------

class HecCounter:
    """Enough of Splunk's HEC for throughput: HTTPS, keep-alive, gzip, the token; counts the
    envelopes of each POST and keeps nothing, unless `capture` holds a list for the bodies."""

    def __init__(self, cert: str, key: str, token: str):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HecHandler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.counter = self
        self.token = token
        self.events = 0
        self.capture: Optional[List[bytes]] = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}/services/collector/event"

    def __enter__(self) -> "HecCounter":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, body: bytes) -> None:
        # "event": is the envelope's key; inside a JSON string a quote is escaped, so it
        # cannot occur there. Exact for flat envelopes, and no JSON parsing to slow us down.
        with self.lock:
            self.events += body.count(b'"event":')
            if self.capture is not None:
                self.capture.append(body)


class _HecHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive
    disable_nagle_algorithm = True     # else each answer waits for a delayed ACK

    def do_POST(self) -> None:
        counter = self.server.counter
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Authorization") != f"Splunk {counter.token}":
            return self.answer(403, b'{"text":"Invalid token","code":4}')
        if self.headers.get("Content-Encoding", "").strip().lower() == "gzip":
            body = gzip.decompress(body)
        counter.count(body)
        self.answer(200, b'{"text":"Success","code":0}')

    def answer(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@dataclass
class HecSite:
    site: Site
    server: HecCounter
    ca: str
    expected: int
    envelopes: List[bytes]           # what siem_tool posted, one envelope each


@contextlib.contextmanager
def hec_site(bench: Bench, name: str) -> Iterator[HecSite]:
    """A site, a counting HEC server, and the envelopes siem_tool posts (captured once)."""
    site = bench.site(name)
    files = certs.ca_signed(site.folder, ["127.0.0.1"])
    with HecCounter(files.cert, files.key, TOKEN) as server:
        site.configure({"Splunk": {"ServerAddress": "127.0.0.1",
                                   "ServerPort": server.httpd.server_address[1],
                                   "Token": TOKEN, "CertFile": files.ca}})
        hec = HecSite(site, server, files.ca, table_count(site.store, "scan_log"), [])
        server.capture = []
        hec_tool_rate(hec)
        # siem_tool joins envelopes with LF; JSON escapes any LF inside them.
        hec.envelopes = [e for body in server.capture for e in body.split(b"\n") if e]
        server.capture = None
        if len(hec.envelopes) != hec.expected:
            raise BenchError(f"captured {len(hec.envelopes)} HEC envelopes, expected {hec.expected}")
        yield hec


def hec_tool_rate(hec: HecSite) -> float:
    before = hec.server.events
    started = time.perf_counter()
    sent = hec.site.send("splunk")
    seconds = time.perf_counter() - started
    received = hec.server.events - before
    if not sent == received == hec.expected:
        raise BenchError(f"siem_tool send --siem=splunk: reported {sent}, HEC counted {received}, "
                         f"the store has {hec.expected}")
    return hec.expected / seconds


def hec_post_rate(hec: HecSite, bodies: Sequence[bytes], events: int, headers: Dict[str, str],
                  post: Callable = requests.post) -> float:
    """Ready-made bodies posted one after the other with `post` (requests.post, or a Session's
    keep-alive post): events/s."""
    before = hec.server.events
    headers = {"Authorization": f"Splunk {TOKEN}", **headers}
    started = time.perf_counter()
    for body in bodies:
        post(hec.server.url, data=body, headers=headers, verify=hec.ca).raise_for_status()
    seconds = time.perf_counter() - started
    if hec.server.events - before != events:
        raise BenchError(f"baseline posted {events} events, HEC counted {hec.server.events - before}")
    return events / seconds


def gzip_bodies(envelopes: Sequence[bytes], limit: int) -> List[bytes]:
    """The envelopes in LF-joined bodies of about `limit` bytes, gzipped as siem_tool does."""
    bodies, chunk, size = [], [], 0
    for envelope in envelopes:
        if chunk and size + len(envelope) + 1 > limit:
            bodies.append(gzip.compress(b"\n".join(chunk), HEC_GZIP_LEVEL))
            chunk, size = [], 0
        chunk.append(envelope)
        size += len(envelope) + 1
    if chunk:
        bodies.append(gzip.compress(b"\n".join(chunk), HEC_GZIP_LEVEL))
    return bodies


@contextlib.contextmanager
def send_hec(bench: Bench) -> Iterator[tuple]:
    with hec_site(bench, "send_hec") as hec:
        sample = hec.envelopes[:HEC_SAMPLE]
        hec.envelopes = []

        def naive() -> float:
            return hec_post_rate(hec, sample, len(sample), {})
        yield (lambda: hec_tool_rate(hec)), naive


@contextlib.contextmanager
def send_hec_ceiling(bench: Bench) -> Iterator[tuple]:
    with hec_site(bench, "send_hec_ceiling") as hec:
        bodies = gzip_bodies(hec.envelopes, HEC_BODY_BYTES)
        hec.envelopes = []

        def ceiling() -> float:
            with requests.Session() as session:
                return hec_post_rate(hec, bodies, hec.expected, {"Content-Encoding": "gzip"}, session.post)
        yield (lambda: hec_tool_rate(hec)), ceiling


# --- the pairs, the table, main --------------------------------------------------------------

PAIRS = [
    Pair("export_csv_scan", "s", 2.0, export_pair(
        "export_csv_scan", ["--log=scannedlog", "--format=csv"], "SELECT * FROM scan_log")),
    Pair("export_csv_app", "s", 2.0, export_pair(
        "export_csv_app", ["--log=assetinfo", "--assetinfo=applicationinfo", "--format=csv"],
        "SELECT * FROM application_info")),
    Pair("export_leef_scan", "s", 2.0, export_pair(
        "export_leef_scan", ["--log=scannedlog", "--format=leef"], "SELECT * FROM scan_log")),
    Pair("export_leef_detect", "s", 2.2, export_pair(
        "export_leef_detect", ["--log=detectedlog", "--format=leef"], DETECT_JOIN)),
    Pair("memory_flat", "MB", 1.1, memory_flat),
    Pair("send_tcp", "rec/s", 0.6, send_tcp),
    Pair("send_tls", "rec/s", 0.6, send_tls),
    Pair("send_hec", "rec/s", 50.0, send_hec),
    Pair("send_hec_ceiling", "rec/s", 0.1, send_hec_ceiling),
]
UDP_NAME = "send_udp_loss"
NAMES = [pair.name for pair in PAIRS[:7]] + [UDP_NAME] + [pair.name for pair in PAIRS[7:]]


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):>10.4g} {min(values):>10.4g} {max(values):>10.4g}"


def print_table(results: Sequence[object]) -> None:
    head = "A: siem_tool (median min max)", "B: baseline (median min max)", "A/B (median min max)"
    print(f"{'pair':<20} {'unit':<6} {head[0]:>32} {head[1]:>32} {head[2]:>32} {'goal':>8}")
    for r in results:
        if isinstance(r, UdpResult):
            print(f"{UDP_NAME:<20} {'rec/s':<6} {spread(r.rates):>32} {'-':>32} "
                  f"{'lost per run: ' + ','.join(map(str, r.lost)):>32} {'no loss':>8}")
        else:
            goal = ('>=' if r.pair.higher_is_better else '<=') + f"{r.pair.goal:g}"
            print(f"{r.pair.name:<20} {r.pair.unit:<6} {spread(r.a):>32} {spread(r.b):>32} "
                  f"{spread(r.ratios):>32} {goal:>8}")
    print()
    for r in results:
        print(r.line())
    print(f"{sum(r.met for r in results)} of {len(results)} goals met")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark siem_tool against its baselines.")
    parser.add_argument("--quick", action="store_true", help="20k-scan store, 3 runs")
    parser.add_argument("--runs", type=int, help="runs per pair (default 5, quick 3)")
    parser.add_argument("--only", help="comma list of pairs: " + ",".join(NAMES))
    args = parser.parse_args(argv)
    args.only = args.only.split(",") if args.only else NAMES
    unknown = sorted(set(args.only) - set(NAMES))
    if unknown:
        parser.error(f"--only: unknown pair {unknown[0]}; choose from {','.join(NAMES)}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs: at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    mode = QUICK if args.quick else FULL
    bench = Bench(mode, args.runs or mode.runs)
    results: List[object] = []
    for name in NAMES:
        if name not in args.only:
            continue
        if name == UDP_NAME:
            results.append(measure_udp(bench, args.runs or mode.udp_runs))
        else:
            results.append(bench.measure(next(p for p in PAIRS if p.name == name)))
    print_table(results)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        sys.exit(1)
