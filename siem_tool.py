"""siem_tool - forward Trend Micro Portable Security 3 logs to a SIEM.

Usage:
  siem_tool export --log=<log> --format=<format> [--assetinfo=<kinds>] [--date <from> <to>] [--ip=<ip> | --netmask=<netmask>] [--hostname=<hostname>] [options]
  siem_tool send --siem=<siem> --log=<log> [--assetinfo=<kinds>] [--startdate=<startdate>] [--dry-run] [options]
  siem_tool check --siem=<siem> [options]
  siem_tool -h | --help
  siem_tool -v | --version

Options:
  --log=<log>            scannedlog, detectedlog, assetinfo or all
  --format=<format>      csv or leef (send always uses leef)
  --assetinfo=<kinds>    comma list of assetinfo, applicationinfo, updateinfo,
                         or all [default: all]
  --date                 export scans and collections made between two days,
                         both inclusive, written ddMMyyyy (--date 01012020 31012020)
  --ip=<ip>              only this endpoint IPv4 address
  --netmask=<netmask>    only this IPv4 network, CIDR (192.168.0.0/24)
  --hostname=<hostname>  only this endpoint host name (case-insensitive)
  --siem=<siem>          qradar, splunk or rsyslog
  --startdate=<startdate>  resend from this import time, "yyyy-MM-dd HH:mm:ss"
                         (overrides Startdate in config.ini for this run)
  --dry-run              select and render as send would, show the first
                         messages, send nothing, move no checkpoint
  --config=<file>        config file (default: config.ini beside siem_tool.py)
  --output=<dir>         folder for the files written (default: export/ or
                         sent/ beside config.ini)
  -d --debug             append details to debug_log_SIEM-tool.txt beside
                         config.ini and show tracebacks
  -h --help              show this text
  -v --version           show the version

Exit codes: 0 done, 1 bug, 2 usage or config error, 3 log store unreadable,
4 SIEM unreachable or refused, 5 another run in progress, 6 done but records
were quarantined, 130 interrupted.
"""
from __future__ import annotations

import calendar
import codecs
import collections
import concurrent.futures
import configparser
import contextlib
import csv
import dataclasses
import difflib
import errno
import functools
import datetime as dt
import gzip
import hashlib
import io
import ipaddress
import json
import logging
import os
import random
import re
import socket
import sqlite3
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

if sys.version_info < (3, 9):
    print(f"siem_tool: error: Python {sys.version.split()[0]} is too old; install Python 3.9 or newer", file=sys.stderr)
    sys.exit(2)
try:
    import docopt
except ImportError:
    print("siem_tool: error: the package docopt-ng is missing; install it with "
          "'py -m pip install docopt-ng requests', or run siem_tool.pyz, which carries it", file=sys.stderr)
    sys.exit(2)

__version__ = "1.0.0"

# --- constants ---------------------------------------------------------------

KINDS = ("scannedlog", "detectedlog", "assetinfo", "applicationinfo", "updateinfo")
ASSET_KINDS = ("assetinfo", "applicationinfo", "updateinfo")
LOG_CHOICES = ("scannedlog", "detectedlog", "assetinfo", "all")
FORMATS = ("csv", "leef")
SIEMS = ("qradar", "splunk", "rsyslog")

DEBUG_LOG_NAME = "debug_log_SIEM-tool.txt"
# Where the Management Program installs itself when the admin keeps the default.
DEFAULT_INSTALLED_FOLDER = r"C:\Program Files (x86)\Trend Micro\Portable Security 3\Management Program"
STORE_RELATIVE_PATH = os.path.join("Data", "tmps3log.db")
STARTDATE_FORMAT = "%Y-%m-%d %H:%M:%S"
STARTDATE_PATTERN = re.compile(r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)?")   # or empty

LEEF_HEADER = "LEEF:2.0|TrendMicro|PortableSecurity|3.0|{event}|{delim}|"
DEFAULT_LEEF_TIME_FORMAT = "MMM dd yyyy HH:mm:ss"

# Default LEEF severity (1-10) per event id, SPEC section 4.
DEFAULT_SEVERITY = {1000: 2, 1001: 4, 1002: 7, 1003: 3, 1004: 3, 3000: 2}
DETECTION_RESULTS = ("Fixed", "Unable to fix", "Fixed at restart", "Ignored")
for _risk in range(3):
    for _r, _sev in enumerate((2, 6 + _risk, 4 + _risk, 5 + _risk)):
        DEFAULT_SEVERITY[2000 + 4 * _risk + _r] = _sev

RECORDS_PER_BATCH = 1000          # the resume point is saved at least this often
BYTES_PER_BATCH = 1_000_000       # ... or this often, whichever comes first
STORE_PAGE = 1000                 # rows read per query (keyset paging); pages in flight bound the memory
RENDER_THREADS = 2                # pages read at once: SQLite renders without Python's lock

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_STORE, EXIT_SIEM, EXIT_BUSY, EXIT_QUARANTINE = 0, 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130

log = logging.getLogger("siem_tool")

# --- errors ------------------------------------------------------------------


class SiemToolError(Exception):
    """An expected failure: main prints its message on one line and exits with its code."""
    exit_code = EXIT_BUG


class UsageError(SiemToolError):
    exit_code = EXIT_USAGE


class ConfigError(SiemToolError):
    exit_code = EXIT_USAGE


class StoreError(SiemToolError):
    exit_code = EXIT_STORE


class PageTooBig(StoreError):
    """A page of records joined is longer than SQLite's longest text: read it row by row."""


class SiemError(SiemToolError):
    """The SIEM could not be reached or refused; `delivered` records of the batch got through."""
    exit_code = EXIT_SIEM

    def __init__(self, message: str, delivered: int = 0, kind_only: bool = False):
        super().__init__(message)
        self.delivered = delivered
        self.kind_only = kind_only  # the other kinds may still be sent (e.g. a missing index)


class BusyError(SiemToolError):
    exit_code = EXIT_BUSY


# --- command line ------------------------------------------------------------


@dataclasses.dataclass
class Options:
    command: str
    kinds: list
    config_path: str
    output: Optional[str] = None
    debug: bool = False
    format: str = "leef"
    date_range: Optional[tuple] = None      # ('YYYY-MM-DD 00:00:00', next day) for SQL
    ip: Optional[str] = None
    network: Optional[ipaddress.IPv4Network] = None
    hostname: Optional[str] = None
    siem: Optional[str] = None
    startdate: Optional[str] = None         # local time text, validated
    dry_run: bool = False


def parse_command_line(argv: Sequence[str]) -> Options:
    """Turn argv into Options; every mistake is a UsageError naming the option."""
    try:
        args = docopt.docopt(__doc__, argv=list(argv), version=f"siem_tool {__version__}")
    except docopt.DocoptExit:
        raise UsageError(explain_usage_mistake(argv)) from None
    command = next(c for c in ("export", "send", "check") if args[c])
    options = Options(
        command=command,
        kinds=parse_kinds(args["--log"] or "all", args["--assetinfo"]),
        config_path=resolve_config_path(args["--config"]),
        output=args["--output"],
        debug=bool(args["--debug"]),
    )
    if command == "export":
        options.format = parse_choice("--format", args["--format"], FORMATS)
        if args["--date"] or args["<from>"]:
            # docopt treats each part of [--date <from> <to>] as optional on its own
            if not (args["--date"] and args["<from>"] and args["<to>"]):
                raise UsageError("--date needs two days: --date <from> <to>, each ddMMyyyy")
            options.date_range = parse_date_range(args["<from>"], args["<to>"])
        options.ip = parse_ip(args["--ip"]) if args["--ip"] is not None else None
        options.network = parse_network(args["--netmask"]) if args["--netmask"] is not None else None
        if args["--hostname"] is not None and not args["--hostname"].strip():
            raise UsageError("--hostname is empty; give an endpoint host name, or leave the option out")
        options.hostname = args["--hostname"]
    else:
        options.siem = parse_choice("--siem", args["--siem"], SIEMS)
        if args["--startdate"] is not None:
            options.startdate = parse_startdate(args["--startdate"], "--startdate")
        options.dry_run = bool(args["--dry-run"])
    return options


def explain_usage_mistake(argv: Sequence[str]) -> str:
    """Name the most likely mistake, since docopt only says that the line did not match."""
    words = list(argv)
    named = {w.split("=", 1)[0] for w in words if w.startswith("-")}
    known = set(re.findall(r"(--?[a-z][a-z-]*)", __doc__.split("Options:")[1]))
    unknown = sorted(n for n in named if n not in known)
    if unknown:
        return f"unknown option {unknown[0]}; run 'siem_tool -h' for the options"
    if {"--ip", "--netmask"} <= named:
        return "--ip and --netmask cannot be used together; give one of them"
    command = next((w for w in words if not w.startswith("-")), None)
    if command not in ("export", "send", "check"):
        return "the first word must be export, send or check; run 'siem_tool -h' for the usage"
    if "--date" in named:
        i = next(k for k, w in enumerate(words) if w.split("=", 1)[0] == "--date")
        values = [w for w in words[i + 1:i + 3] if not w.startswith("-")]
        if "=" in words[i] or len(values) < 2:
            return "--date needs two days after a space: --date <from> <to>, each ddMMyyyy"
    needed = {"export": ("--log", "--format"), "send": ("--siem", "--log"), "check": ("--siem",)}[command]
    for required in needed:
        if required not in named:
            return f"{command} needs {required}; run 'siem_tool -h' for the usage"
    return f"these options do not fit '{command}', or a value is missing; run 'siem_tool -h' for the usage"


def parse_choice(option: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UsageError(f"{option}={value}: unknown value; use one of {', '.join(choices)}")
    return value


def parse_kinds(log_value: str, assetinfo_value: str) -> list:
    """The kinds a run covers, in the order they are written or sent."""
    parse_choice("--log", log_value, LOG_CHOICES)
    asset_kinds = parse_asset_kinds(assetinfo_value or "all")
    if log_value == "all":
        return ["scannedlog", "detectedlog"] + asset_kinds
    return asset_kinds if log_value == "assetinfo" else [log_value]


def parse_asset_kinds(value: str) -> list:
    wanted = [w.strip() for w in value.split(",") if w.strip()]
    if wanted == ["all"]:
        return list(ASSET_KINDS)
    for word in wanted:
        if word not in ASSET_KINDS:
            raise UsageError(f"--assetinfo={value}: unknown kind '{word}'; use a comma list of "
                             f"{', '.join(ASSET_KINDS)}, or all")
    if not wanted:
        raise UsageError("--assetinfo is empty; use a comma list of assetinfo, applicationinfo, updateinfo, or all")
    return [k for k in ASSET_KINDS if k in wanted]


def parse_day(value: str, option: str) -> dt.date:
    if not re.fullmatch(r"\d{8}", value or ""):
        raise UsageError(f"{option} {value}: not a day; write ddMMyyyy, e.g. 31012020")
    try:
        return dt.date(int(value[4:]), int(value[2:4]), int(value[:2]))
    except ValueError:
        raise UsageError(f"{option} {value}: no such day; write ddMMyyyy, e.g. 31012020") from None


def parse_date_range(first: str, last: str) -> tuple:
    start, end = parse_day(first, "--date"), parse_day(last, "--date")
    if start > end:
        raise UsageError(f"--date {first} {last}: the first day is after the second; give <from> then <to>")
    if end == dt.date.max:      # no next day to stop before: the end of the last one
        return (f"{start.isoformat()} 00:00:00", f"{end.isoformat()} 24:00:00")
    after_end = end + dt.timedelta(days=1)
    return (f"{start.isoformat()} 00:00:00", f"{after_end.isoformat()} 00:00:00")


def parse_ip(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise UsageError(f"--ip={value}: not an IPv4 address; write it like 192.168.0.10") from None


def parse_network(value: str) -> ipaddress.IPv4Network:
    """A CIDR network; host bits set (192.168.1.5/24) mean that address's network, as SPEC says."""
    if "/" not in value:
        raise UsageError(f"--netmask={value}: not a network in CIDR form; write it like 192.168.0.0/24")
    try:
        return ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise UsageError(f"--netmask={value}: not a network in CIDR form; write it like 192.168.0.0/24") from None


def parse_startdate(value: str, where: str) -> str:
    try:
        return store_time_text(dt.datetime.strptime(value.strip(), STARTDATE_FORMAT))
    except ValueError:
        raise UsageError(f"{where} '{value}': not a time; write \"yyyy-MM-dd HH:mm:ss\", "
                         f"e.g. \"2020-07-10 17:01:08\"") from None


def resolve_config_path(value: Optional[str]) -> str:
    """--config, or config.ini in siem_tool.py's own folder, as SIEM-Tool.exe found its own."""
    if value:
        return os.path.abspath(value)
    folder = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(folder):     # running from siem_tool.pyz: config.ini stands beside the archive
        folder = os.path.dirname(folder)
    return os.path.join(folder, "config.ini")


# --- config ------------------------------------------------------------------

SECRET_KEYS = {"token"}


def decode_config_bytes(data: bytes, path: str) -> tuple:
    """(text, codec, BOM) of config.ini as Windows editors save it: UTF-8 with or without BOM
    (Notepad), UTF-16 (PowerShell redirection), cp932 (Japanese "ANSI" Notepad)."""
    for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                       (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(codec), codec, bom
            except UnicodeDecodeError:
                break
    else:
        for codec in ("utf-8", "cp932"):
            try:
                return data.decode(codec), codec, b""
            except UnicodeDecodeError:
                continue
    raise ConfigError(f"{path}: not readable as UTF-8, UTF-16 or Shift_JIS text; save it as UTF-8 in Notepad")


def read_config_file(path: str) -> tuple:
    return decode_config_bytes(read_config_bytes(path), path)


def read_config_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; copy config.ini there or give --config=<file>") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file; give --config=<file>") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror}); check its permissions") from None


def parse_ini(text: str, path: str) -> dict:
    """Sections by lower-case name, each a dict of lower-case key -> value.

    Error texts give line numbers, never line contents: a bad line may hold the HEC token.
    """
    parser = configparser.ConfigParser(interpolation=None, strict=True, comment_prefixes=(";", "#"),
                                       empty_lines_in_values=False, default_section="\x00none")
    # configparser reads an indented line as more of the value above: a Token line indented by
    # mistake would become part of, say, ServerPort, and be shown in its error. No value here
    # spans lines, so every line stands on its own.
    text = "\n".join(line.lstrip() for line in text.split("\n"))
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as e:
        raise ConfigError(f"{path} line {e.lineno}: section [{e.section}] appears twice; merge the two") from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(f"{path} line {e.lineno}: [{e.section}] {e.option} appears twice; keep one") from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(f"{path} line {e.lineno}: a setting before any [section]; "
                          f"start the file with [General Setting]") from None
    except configparser.ParsingError as e:
        line = e.errors[0][0] if e.errors else "?"
        raise ConfigError(f"{path} line {line}: not a 'Key = value' line; fix or comment it out with ;") from None
    sections = {}
    for name in parser.sections():
        if name.strip().lower() in sections:
            raise ConfigError(f"{path}: section [{name}] appears twice (letter case differs); merge the two")
        sections[name.strip().lower()] = dict(parser.items(name))
    return sections


class IniSection:
    """Typed, validated reads of one section; each error names file, section, key and what is allowed."""

    def __init__(self, path: str, name: str, values: Optional[dict]):
        if values is None:
            raise ConfigError(f"{path}: section [{name}] is missing; add it (see the config.ini shipped with siem_tool)")
        self.path, self.name, self.values = path, name, values

    def fail(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.path} [{self.name}] {key}: {why}")

    def text(self, key: str, default: Optional[str] = None) -> str:
        value = self.values.get(key.lower(), "").strip()
        if value:
            return value
        if default is None:
            raise self.fail(key, "missing or empty; it is required")
        return default

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.text(key, str(default))
        shown = "(hidden)" if key.lower() in SECRET_KEYS else repr(value)
        if not re.fullmatch(r"[+-]?\d+", value) or not low <= int(value) <= high:
            raise self.fail(key, f"{shown} is not allowed; use a whole number from {low} to {high}")
        return int(value)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.text(key, str(default))
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not low <= number <= high:
            raise self.fail(key, f"{value!r} is not allowed; use a number from {low:g} to {high:g}")
        return number

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.text(key, default)
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise self.fail(key, f"{value!r} is not allowed; use one of {', '.join(choices)}")

    def boolean(self, key: str, default: bool) -> bool:
        return self.choice(key, "yes" if default else "no", ("yes", "no", "true", "false", "1", "0")) in ("yes", "true", "1")

    def path_value(self, key: str, default: str = "") -> str:
        """A path relative to config.ini's folder, never to the working directory (Task Scheduler)."""
        value = self.text(key, default).strip('"')
        if not value:
            return ""
        return os.path.normpath(os.path.join(os.path.dirname(self.path), os.path.expanduser(value)))


@dataclasses.dataclass
class SyslogSettings:
    label: str              # e.g. "QRadar 10.0.0.5:6514 (TLS)", for messages
    address: str
    port: int
    protocol: str           # UDP, TCP or TLS
    cert_file: str
    server_name: str
    framing: str            # lf or octet-counting
    header: str             # rfc3164 or rfc5424
    max_message: int
    timeout: float
    udp_rate: int           # datagrams per second


@dataclasses.dataclass
class SplunkSettings:
    label: str
    address: str
    port: int
    token: str = dataclasses.field(repr=False)
    cert_file: str
    server_name: str
    source_type: str
    use_ack: bool
    timeout: float
    retry_seconds: float
    batch_bytes: int
    gzip_level: int
    time_zone: Optional[dt.tzinfo]


@dataclasses.dataclass
class Config:
    path: str
    folder: str
    codec: str
    bom: bytes
    sections: dict = dataclasses.field(repr=False)
    startdate: str
    facility: int
    store_path: str
    severity: dict
    leef_time_format: str
    leef_delimiter: str

    def section(self, name: str) -> IniSection:
        return IniSection(self.path, name, self.sections.get(name.lower()))

    def siem_settings(self, siem: str):
        return {"qradar": qradar_settings, "rsyslog": rsyslog_settings, "splunk": splunk_settings}[siem](self)


# The keys each section may hold (any letter case). A key close to one of them is a typo that
# must not pass quietly: "Protocl = TLS" would leave the default, UDP in clear text.
SYSLOG_KEYS = ("ServerAddress", "ServerPort", "CertFile", "TLSServerName", "Framing", "Header",
               "MaxMessageSize", "Timeout", "UdpRate")
KNOWN_KEYS = {
    "General Setting": ("Startdate", "Facility", "InstalledFolder", "LeefTimeFormat", "LeefDelimiter",
                        *(f"Event{event}" for event in DEFAULT_SEVERITY)),
    "Splunk": ("ServerAddress", "ServerPort", "Token", "CertFile", "TLSServerName", "SourceType", "UseAck",
               "Timeout", "RetrySeconds", "BatchBytes", "GzipLevel", "TimeZone"),
    "QRadar": SYSLOG_KEYS,
    "RSyslog": ("Protocol", *SYSLOG_KEYS),
}


def check_key_names(sections: dict, path: str) -> None:
    for section, keys in KNOWN_KEYS.items():
        known = {key.lower(): key for key in keys}
        for key in sections.get(section.lower(), {}):
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75) if key not in known else None
            if close:
                raise ConfigError(f"{path} [{section}] {key}: not a key siem_tool knows; "
                                  f"did you mean {known[close[0]]}?")
            if key not in known:
                log.debug("%s [%s] %s: not a key siem_tool knows; ignored", path, section, key)


def load_config(path: str) -> Config:
    """The only code that reads config.ini."""
    text, codec, bom = read_config_file(path)
    sections = parse_ini(text, path)
    check_key_names(sections, path)
    general = IniSection(path, "General Setting", sections.get("general setting"))
    startdate = general.text("Startdate", "")
    if startdate:
        startdate = parse_startdate(startdate, f"{path} [General Setting] Startdate")
    installed = general.path_value("InstalledFolder", DEFAULT_INSTALLED_FOLDER)
    time_format = general.text("LeefTimeFormat", DEFAULT_LEEF_TIME_FORMAT)
    try:
        compile_java_time_pattern(time_format)
    except ValueError as e:
        raise general.fail("LeefTimeFormat", str(e)) from None
    return Config(
        path=path, folder=os.path.dirname(path), codec=codec, bom=bom, sections=sections,
        startdate=startdate,
        facility=general.integer("Facility", 20, 0, 23),
        store_path=os.path.join(installed, STORE_RELATIVE_PATH),
        severity={event: general.integer(f"Event{event}", sev, 1, 10) for event, sev in DEFAULT_SEVERITY.items()},
        leef_time_format=time_format,
        leef_delimiter=parse_leef_delimiter(general),
    )


def parse_leef_delimiter(general: IniSection) -> str:
    """TAB by default (the guide's choice); any other punctuation, written as itself or as xHH."""
    value = general.text("LeefDelimiter", "x09")
    match = re.fullmatch(r"(?:x|0x|\\x)([0-9A-Fa-f]{2})", value)
    char = chr(int(match.group(1), 16)) if match else value
    if char == "\t" or (len(char) == 1 and char.isascii() and char.isprintable()
                        and not char.isalnum() and char not in "= \\'\""):
        return char
    raise general.fail("LeefDelimiter", f"{value!r} is not allowed; use x09 (TAB) or one punctuation "
                                        f"character such as ^ (x5E), not = or \\")


def syslog_settings(config: Config, section_name: str, protocol: str, default_port: int) -> SyslogSettings:
    section = config.section(section_name)
    address = section.text("ServerAddress")
    port = section.integer("ServerPort", default_port, 1, 65535)
    cert_file = section.path_value("CertFile")
    if protocol == "TLS" and section_name == "QRadar" and not cert_file:
        raise section.fail("CertFile", "missing; copy QRadar's syslog-tls.cert beside config.ini and name it here")
    if cert_file and protocol == "TLS" and not os.path.isfile(cert_file):
        raise section.fail("CertFile", f"{cert_file} not found; copy the server's certificate there")
    return SyslogSettings(
        label=f"{section_name} {address}:{port} ({protocol})",
        address=address, port=port, protocol=protocol, cert_file=cert_file,
        server_name=section.text("TLSServerName", ""),
        framing=section.choice("Framing", "lf", ("lf", "octet-counting")),
        header=section.choice("Header", "rfc3164" if section_name == "QRadar" else "rfc5424",
                              ("rfc3164", "rfc5424")),
        max_message=section.integer("MaxMessageSize", 8096, 480, 65507 if protocol == "UDP" else 1048576),
        timeout=section.number("Timeout", 30, 0.1, 3600),
        udp_rate=section.integer("UdpRate", 25000, 1, 1000000),
    )


def qradar_settings(config: Config) -> SyslogSettings:
    return syslog_settings(config, "QRadar", "TLS", 6514)


def rsyslog_settings(config: Config) -> SyslogSettings:
    protocol = config.section("RSyslog").choice("Protocol", "UDP", ("UDP", "TCP", "TLS"))
    return syslog_settings(config, "RSyslog", protocol, 514)


def splunk_settings(config: Config) -> SplunkSettings:
    section = config.section("Splunk")
    address = section.text("ServerAddress")
    port = section.integer("ServerPort", 8088, 1, 65535)
    token = section.values.get("token", "").strip()
    if not token:
        raise section.fail("Token", "missing or empty; paste the HEC token from Splunk's Settings > Data inputs")
    if not re.fullmatch(r"[!-~]+", token):   # it goes into an HTTP header: visible ASCII only
        raise section.fail("Token", "holds a space, a line break, a control or a full-width character, which "
                                    "no HEC token has; paste it again from Splunk's Settings > Data inputs, on one line")
    cert_file = section.path_value("CertFile")
    if cert_file and not os.path.isfile(cert_file):
        raise section.fail("CertFile", f"{cert_file} not found; copy Splunk's CA certificate there")
    return SplunkSettings(
        label=f"Splunk HEC {address}:{port}", address=address, port=port, token=token,
        cert_file=cert_file, server_name=section.text("TLSServerName", ""),
        source_type=section.text("SourceType", "tmps3:leef"),
        use_ack=section.boolean("UseAck", False),
        timeout=section.number("Timeout", 30, 0.1, 3600),
        retry_seconds=section.number("RetrySeconds", 300, 0, 86400),
        batch_bytes=section.integer("BatchBytes", BYTES_PER_BATCH, 1000, 100_000_000),
        gzip_level=section.integer("GzipLevel", 1, 0, 9),
        time_zone=parse_time_zone(section),
    )


def parse_time_zone(section: IniSection) -> Optional[dt.tzinfo]:
    """Zone of the store's endpoint times for HEC's epoch `time`; empty means this PC's zone."""
    value = section.text("TimeZone", "")
    if not value:
        return None
    if value.upper() in ("UTC", "Z"):
        return dt.timezone.utc
    match = re.fullmatch(r"(?:UTC)?\s*([+-])(\d{2}):?(\d{2})", value, re.IGNORECASE)
    if not match:
        raise section.fail("TimeZone", f"{value!r} is not allowed; use UTC or an offset like +09:00, or leave it empty")
    sign = -1 if match.group(1) == "-" else 1
    hours, minutes = int(match.group(2)), int(match.group(3))
    if hours > 23 or minutes > 59:
        raise section.fail("TimeZone", f"{value!r} is not allowed; an offset is at most +23:59 or -23:59")
    return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))


def masked_config(config: Config) -> dict:
    """config.ini as the debug log shows it: secrets replaced."""
    return {name: {k: ("********" if k in SECRET_KEYS else v) for k, v in values.items()}
            for name, values in config.sections.items()}


# --- times -------------------------------------------------------------------

MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July",
               "August", "September", "October", "November", "December")
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
STORE_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)", re.ASCII)

# Java pattern letters -> how to write them. Names are English on purpose: a Japanese
# Windows locale must not turn "Jul" into "7月" in a SIEM that parses English.
JAVA_FIELDS = {
    "yyyy": lambda t: f"{t.year:04d}", "yy": lambda t: f"{t.year % 100:02d}",
    "MMMM": lambda t: MONTH_NAMES[t.month - 1], "MMM": lambda t: MONTH_NAMES[t.month - 1][:3],
    "MM": lambda t: f"{t.month:02d}", "M": lambda t: str(t.month),
    "dd": lambda t: f"{t.day:02d}", "d": lambda t: str(t.day),
    "HH": lambda t: f"{t.hour:02d}", "H": lambda t: str(t.hour),
    "hh": lambda t: f"{(t.hour % 12) or 12:02d}", "h": lambda t: str((t.hour % 12) or 12),
    "mm": lambda t: f"{t.minute:02d}", "m": lambda t: str(t.minute),
    "ss": lambda t: f"{t.second:02d}", "s": lambda t: str(t.second),
    "SSS": lambda t: f"{t.microsecond // 1000:03d}",
    "a": lambda t: "AM" if t.hour < 12 else "PM",
    "EEEE": lambda t: DAY_NAMES[t.weekday()], "EEE": lambda t: DAY_NAMES[t.weekday()][:3],
    "Z": lambda t: local_offset(t, colon=False), "XXX": lambda t: local_offset(t, colon=True),
}
JAVA_TOKEN = re.compile(r"""
    '((?:[^']|'')*)'     # quoted text; '' inside is one quote
  | ([A-Za-z])\2*        # a run of one pattern letter
  | [^A-Za-z']+          # anything else is written as it is
  | (')                  # an unterminated quote
""", re.VERBOSE)


# Endpoint clocks reach the calendar's ends (0001-01-01, 9999-12-31), where asking for the
# zone, or converting, steps outside what datetime can hold: ask a day inside instead.
CALENDAR_INSIDE = (dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30))


def local_zone(moment: dt.datetime) -> dt.tzinfo:
    """This PC's zone, as a fixed offset, at a naive local moment."""
    return min(max(moment, CALENDAR_INSIDE[0]), CALENDAR_INSIDE[1]).astimezone().tzinfo


def local_offset(t: dt.datetime, colon: bool) -> str:
    """This PC's UTC offset at t: the store's endpoint times carry no zone of their own."""
    offset = local_zone(t).utcoffset(None) or dt.timedelta(0)
    if colon and not offset:
        return "Z"
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}{':' if colon else ''}{minutes % 60:02d}"


def compile_java_time_pattern(pattern: str) -> Callable[[dt.datetime], str]:
    """A function writing a datetime as the Java SimpleDateFormat pattern would; ValueError if unsupported."""
    pieces = []
    for match in JAVA_TOKEN.finditer(pattern):
        quoted, letter, stray = match.group(1), match.group(2), match.group(3)
        token = match.group(0)
        if stray:
            raise ValueError(f"unterminated quote in {pattern!r}; write a literal quote as ''")
        if quoted is not None:
            literal = quoted.replace("''", "'") if quoted else "'"
            pieces.append(lambda t, s=literal: s)
        elif letter:
            if token not in JAVA_FIELDS:
                raise ValueError(f"{pattern!r}: pattern letters {token!r} are not supported; use "
                                 f"{' '.join(JAVA_FIELDS)} and 'quoted text'")
            pieces.append(JAVA_FIELDS[token])
        else:
            pieces.append(lambda t, s=token: s)
    return lambda t: "".join(piece(t) for piece in pieces)


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _names_sql(number_sql: str, names: Sequence[str]) -> str:
    """The name of a 1-based number, cut from one padded string: cheaper in SQL than a CASE."""
    width = max(map(len, names))
    table = sql_literal("".join(name.ljust(width) for name in names))
    name = f"substr({table}, ({number_sql}) * {width} - {width - 1}, {width})"
    return name if all(len(n) == width for n in names) else f"rtrim({name})"


def _hour12_sql(pad: bool) -> str:
    hour = "((CAST(substr({e},12,2) AS INTEGER) + 11) % 12 + 1)"
    return f"printf('%02d', {hour})" if pad else hour


# The same pattern letters as SQL over a store time {e}: SQLite renders the times in C, which
# keeps exports near the speed of the sqlite3 tool. Zones (Z, XXX) stay in Python.
MONTH_SQL = "CAST(substr({e},6,2) AS INTEGER)"
WEEKDAY_SQL = "(CAST(strftime('%w', substr({e},1,10)) AS INTEGER) + 6) % 7 + 1"   # %w: 0 is Sunday
JAVA_SQL = {
    "yyyy": "substr({e},1,4)", "yy": "substr({e},3,2)",
    "MMMM": _names_sql(MONTH_SQL, MONTH_NAMES), "MMM": _names_sql(MONTH_SQL, [m[:3] for m in MONTH_NAMES]),
    "MM": "substr({e},6,2)", "M": MONTH_SQL,
    "dd": "substr({e},9,2)", "d": "CAST(substr({e},9,2) AS INTEGER)",
    "HH": "substr({e},12,2)", "H": "CAST(substr({e},12,2) AS INTEGER)",
    "hh": _hour12_sql(True), "h": _hour12_sql(False),
    "mm": "substr({e},15,2)", "m": "CAST(substr({e},15,2) AS INTEGER)",
    "ss": "substr({e},18,2)", "s": "CAST(substr({e},18,2) AS INTEGER)",
    "SSS": "'000'",
    "a": "CASE WHEN substr({e},12,2) < '12' THEN 'AM' ELSE 'PM' END",
    "EEEE": _names_sql(WEEKDAY_SQL, DAY_NAMES), "EEE": _names_sql(WEEKDAY_SQL, [d[:3] for d in DAY_NAMES]),
}
# What parse_store_time accepts, as SQL: the schema's exact form and a real moment (SQLite
# moves 2021-02-29 or 24:00:00 to the next day, so they differ from themselves).
VALID_TIME_SQL = "(datetime({e}, '+0 days') IS {e} AND {e} >= '0001')"


# Where the fixed-width letters stand in a store time, for substr.
STORE_TIME_SHAPE = "yyyy-MM-dd HH:mm:ss"
STORE_TIME_SLICES = {letters: (STORE_TIME_SHAPE.index(letters), len(letters))
                     for letters in ("yyyy", "MM", "dd", "HH", "mm", "ss")}


def java_time_slices(pattern: str) -> Optional[list]:
    """The pattern as (literal, None) and ("", SQL over {e}) parts, the fixed-width letters as
    substr of the store time, a run of them with the store's own separators between as one
    ("HH:mm:ss" is substr({e},12,8)); None when a letter needs Python (zones). Each part is
    an argument of the one printf that writes a line: SQLite allocates a string for each
    function result but a short substr, and two reading threads then wait on its allocator."""
    parts = []
    for match in JAVA_TOKEN.finditer(pattern):
        quoted, letter = match.group(1), match.group(2)
        token = match.group(0)
        if quoted is not None or not letter:
            literal = (quoted.replace("''", "'") if quoted else "'") if quoted is not None else token
            parts.append((literal, None))
        elif token in STORE_TIME_SLICES:
            start, length = STORE_TIME_SLICES[token]
            if (len(parts) >= 2 and parts[-1][1] is None and isinstance(parts[-2][1], tuple)
                    and STORE_TIME_SHAPE[sum(parts[-2][1]):start] == parts[-1][0]):
                start, length = parts[-2][1][0], start + length - parts[-2][1][0]
                del parts[-2:]
            elif parts and isinstance(parts[-1][1], tuple) and sum(parts[-1][1]) == start:
                start, length = parts[-1][1][0], length + parts[-1][1][1]
                del parts[-1]
            parts.append(("", (start, length)))
        elif token in JAVA_SQL:
            parts.append(("", JAVA_SQL[token]))
        else:
            return None
    return [(literal, "{e}" if sql == (0, 19) else f"substr({{e}},{sql[0] + 1},{sql[1]})")
            if isinstance(sql, tuple) else (literal, sql) for literal, sql in parts]


def java_time_sql(pattern: str, expr: str, raw: Optional[str] = None) -> Optional[str]:
    """SQL writing the store time `expr` as the pattern does, or `raw` (by default the value
    itself) if it is not a time; None when the pattern needs Python (zones)."""
    parts = java_time_slices(pattern)
    if parts is None:
        return None
    if len(parts) == 1 and parts[0][1]:
        rendered = parts[0][1]
    elif not any(sql for _literal, sql in parts):
        rendered = sql_literal("".join(literal for literal, _sql in parts))
    else:
        rendered = printf_sql(parts)
    text = f"CAST({expr} AS TEXT)"   # what Python would see: a BLOB or a number as its text
    return f"CASE WHEN {VALID_TIME_SQL} THEN {rendered} ELSE {raw or expr} END".replace("{e}", text)


def parse_store_time(text) -> Optional[dt.datetime]:
    """An endpoint time as the store keeps it ('YYYY-MM-DD HH:MM:SS'), or None if it is not one."""
    match = STORE_TIME.fullmatch(text) if isinstance(text, str) else None
    if not match:
        return None
    try:
        return dt.datetime(*map(int, match.groups()))
    except ValueError:
        return None


def store_time_text(moment: dt.datetime) -> str:
    """'yyyy-MM-dd HH:mm:ss' with a four-digit year: strftime writes year 1 as '1'."""
    return f"{moment.year:04d}-{moment:%m-%d %H:%M:%S}"


def local_to_utc_text(local_text: str) -> str:
    """A Startdate (this PC's local time) as the store's imported_at (UTC) text."""
    local = dt.datetime.strptime(local_text, STARTDATE_FORMAT)
    try:
        utc = local.replace(tzinfo=local_zone(local)).astimezone(dt.timezone.utc)
    except OverflowError:   # a Startdate at the calendar's very end: it means the end
        return store_time_text(dt.datetime.min if local.year == 1 else dt.datetime.max)
    return store_time_text(utc)


def utc_to_local_text(utc_text: str) -> str:
    utc = parse_store_time(utc_text)
    if utc is None:
        return ""
    try:
        return store_time_text(utc.replace(tzinfo=dt.timezone.utc).astimezone(local_zone(utc)))
    except OverflowError:
        return store_time_text(utc)


# --- store -------------------------------------------------------------------

SEV, EVENT, FORMAT, TIME, VALUE = "sev", "event", "format", "time", "value"


@dataclasses.dataclass(frozen=True)
class KindSpec:
    """One log kind: where its rows come from and the keys of its records, in the guide's order."""
    name: str
    alias: str                # the alias of the table whose id orders the kind
    source: str               # FROM clause, with the joins that bring endpoint fields
    fields: tuple             # (key, role, SQL expression or '')
    event_exprs: tuple        # what the event id is computed from
    event_id: Callable
    host_expr: str
    time_expr: str
    ip_expr: str

    def select_list(self, time_pattern: Optional[str] = None) -> str:
        """id, import time, HEC's host and time, the event id's inputs, then every value as text,
        times written in time_pattern (raw when None)."""
        columns = [f"{self.alias}.id", f"{self.alias}.imported_at", self.host_expr, self.time_expr,
                   *self.event_exprs]
        for _key, role, expr in self.fields:
            raw = text_sql(expr)
            if role == VALUE:
                columns.append(raw)
            elif role == TIME:
                columns.append(java_time_sql(time_pattern, expr, raw) if time_pattern else raw)
        return ", ".join(columns)

    @functools.cached_property
    def sev_at(self) -> int:
        """How many values come before sev (devTime in scans and detections)."""
        roles = [role for _key, role, _expr in self.fields if role != FORMAT]
        return roles.index(SEV)

    @property
    def table(self) -> str:
        return self.source.split()[0]


def text_sql(expr: str) -> str:
    """Any column as text in SQL (NULL as ''), so that Python gets strings only."""
    return f"coalesce(CAST({expr} AS TEXT), '')"


def as_int(value) -> Optional[int]:
    """An INTEGER column's value, or None: SQLite lets any text into an INTEGER column."""
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def scan_event_id(status, infected, fixed) -> int:
    if status == "Scan canceled":
        return 1003
    if status == "Scan suspended":
        return 1004
    infected, fixed = as_int(infected), as_int(fixed)
    if infected == 0:
        return 1000
    if infected is not None and fixed is not None and fixed >= infected > 0:
        return 1001
    return 1002  # threats left, or counts we cannot read: the loud answer


@functools.lru_cache(maxsize=4096)
def detection_event_id(risk, result) -> int:
    """2000 + 4*risk + result; an unknown risk or result is high risk, unable to fix (2009)."""
    risk = as_int(risk)
    if risk not in (0, 1, 2) or result not in DETECTION_RESULTS:
        return 2009
    return 2000 + 4 * risk + DETECTION_RESULTS.index(result)


def fields_of(alias: str, spec: str) -> tuple:
    """Parse 'key:column ...' lines into (key, role, expression) triples."""
    out = []
    for word in spec.split():
        key, _, column = word.partition(":")
        role = {"<sev>": SEV, "<event>": EVENT, "<format>": FORMAT}.get(column)
        if role:
            out.append((key, role, ""))
        else:
            expr = column if "." in column else f"{alias}.{column}"
            out.append((key, TIME if key in ("devTime", "startTime", "endTime") else VALUE, expr))
    return tuple(out)


SCAN_ENDPOINT = """deviceID:s.device_id deviceName:s.device_name deviceVid:s.device_vid
    devicePid:s.device_pid deviceSid:s.device_sid"""
SCAN_HOST = """hostName:s.host_name hostDomain:s.host_domain userName:s.user_name hostIP:s.host_ip
    hostMac:s.host_mac hostOS:s.host_os"""
SCAN_HEAD = """devTime:s.start_time devTimeFormat:<format> sev:<sev> eventId:<event>"""

KIND_SPECS = {spec.name: spec for spec in (
    KindSpec("scannedlog", "s", "scan_log s", fields_of("s", f"""{SCAN_HEAD} logID:log_id
        logVersion:log_version startTime:start_time endTime:end_time {SCAN_ENDPOINT}
        scannerVersion:scanner_version scanEngineVersion:scan_engine_version patternVersion:pattern_version
        {SCAN_HOST} scannedStatus:scanned_status scannedFiles:scanned_files infectedFiles:infected_files
        fixedFiles:fixed_files scanTarget:scan_target exclusionPath:exclusion_path
        exclusionFile:exclusion_file exclusionExtension:exclusion_extension comment:comment"""),
        ("s.scanned_status", "s.infected_files", "s.fixed_files"), scan_event_id,
        "s.host_name", "s.start_time", "s.host_ip"),
    KindSpec("detectedlog", "d", "detection_log d LEFT JOIN scan_log s ON s.log_id = d.log_id",
             fields_of("d", f"""{SCAN_HEAD} logID:d.log_id logVersion:s.log_version
        startTime:s.start_time endTime:s.end_time {SCAN_ENDPOINT} {SCAN_HOST}
        aggressiveLevel:aggressive_level threatName:threat_name threatType:threat_type
        threatRisk:threat_risk takenAct:taken_act takenActResult:taken_act_result
        threatHash:threat_hash threatPath:threat_path"""),
        ("d.threat_risk", "d.taken_act_result"), detection_event_id,
        "s.host_name", "s.start_time", "s.host_ip"),
    KindSpec("assetinfo", "a", "asset_info a", fields_of("a", """sev:<sev> eventId:<event>
        hostID:host_id hostName:host_name domain:domain Mac:mac IP:ip OS:os OSType:os_type
        vendorName:vendor_name hwModel:hw_model hwSerialNum:hw_serial_num
        biosVersionAndDate:bios_version_and_date biosType:bios_type secureBoot:secure_boot CPU:cpu
        CPUArchitecture:cpu_architecture processorsAndCores:processors_and_cores
        physicalMemory:physical_memory availableMemory:available_memory
        OSVersionAndBuild:os_version_and_build OSServicePack:os_service_pack OSProductID:os_product_id
        OSLanguage:os_language OSInstalledDateAndTime:os_installed_date_and_time
        IEVersionAndBuild:ie_version_and_build IEServicePack:ie_service_pack
        IEUpdateVersion:ie_update_version windowsDirectory:windows_directory
        systemDirectory:system_directory systemDriveSize:system_drive_size
        systemDriveAvailableSize:system_drive_available_size bootDrive:boot_drive timezone:timezone
        systemDateAndTime:system_date_and_time loggedinAccount:loggedin_account
        loggedinDomain:loggedin_domain"""), (), lambda: 3000, "a.host_name", "a.collected_at", "a.ip"),
    KindSpec("applicationinfo", "p", "application_info p LEFT JOIN asset_info a ON a.id = p.asset_id",
             fields_of("p", """sev:<sev> eventId:<event> hostID:host_id name:name publisher:publisher
        installedDate:installed_date size:size version:version installPath:install_path"""),
             (), lambda: 3000, "a.host_name", "a.collected_at", "a.ip"),
    KindSpec("updateinfo", "u", "update_info u LEFT JOIN asset_info a ON a.id = u.asset_id",
             fields_of("u", """sev:<sev> eventId:<event> hostID:host_id name:name program:program
        version:version publisher:publisher installedDate:installed_date"""),
             (), lambda: 3000, "a.host_name", "a.collected_at", "a.ip"),
)}


def required_columns(spec: KindSpec) -> dict:
    """table -> columns that the kind's query reads, for a clear error on another schema."""
    aliases = {"s": "scan_log", "d": "detection_log", "a": "asset_info", "p": "application_info",
               "u": "update_info"}
    sql = " ".join([spec.select_list(), spec.source])
    needed = {}
    for alias, column in re.findall(r"\b([sdapu])\.(\w+)", sql):
        needed.setdefault(aliases[alias], set()).add(column)
    return needed


@contextlib.contextmanager
def store_errors(path: str, timeout: float):
    """Turn SQLite's errors into one line that says what to do."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        text = str(e)
        if "too big" in text:
            raise PageTooBig(f"log store {path}: a record is longer than SQLite can return (1 GB)") from None
        if "locked" in text or "busy" in text:
            why = f"locked by another program for more than {timeout:g} s; run again when the Management Program is idle"
        elif "not a database" in text or "file is encrypted" in text:
            why = "not an SQLite log store; check InstalledFolder in config.ini"
        elif "malformed" in text or "corrupt" in text:
            why = "damaged (SQLite: database disk image is malformed); let the Management Program repair it"
        elif "readonly" in text:
            why = ("cannot be read by this account: the store is in WAL mode and SQLite must create "
                   "tmps3log.db-shm beside it; let this account write to the Data folder")
        elif "unable to open" in text:
            why = "cannot be opened; check that this account may read it"
        else:
            why = f"unreadable (SQLite: {text})"
        raise StoreError(f"log store {path}: {why}") from None


def tolerant_text(data: bytes) -> str:
    """Text columns holding invalid UTF-8 (written by a buggy endpoint) still make a record."""
    return data.decode("utf-8", "replace")


class Store:
    """The Management Program's SQLite log store, opened read-only and read in pages by id.
    Each thread gets a connection of its own: one connection runs one statement at a time."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.path, self.timeout = path, timeout
        check_store_file(path)
        self.uri = "file:" + urllib_quote_path(path) + "?mode=ro"
        self.local, self.connections = threading.local(), []
        self.db = self.connection()
        # Pages are read on threads of their own, each with its own connection, kept for the run.
        self.pool = concurrent.futures.ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="siem_tool-read")

    def connection(self) -> sqlite3.Connection:
        db = getattr(self.local, "db", None)
        if db is None:
            with store_errors(self.path, self.timeout):
                db = sqlite3.connect(self.uri, uri=True, timeout=self.timeout, check_same_thread=False)
                db.create_function("siem_fold", 1, fold_text, deterministic=True)
                db.create_function("siem_ipv4", 1, ipv4_number, deterministic=True)
            self.local.db = db
            self.connections.append(db)
        return db

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for db in self.connections:
            db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_schema(self, kinds: Iterable[str]) -> None:
        with store_errors(self.path, self.timeout):
            for kind in kinds:
                for table, columns in required_columns(KIND_SPECS[kind]).items():
                    info = self.db.execute(f"PRAGMA table_info({table})").fetchall()
                    present = {row[1].lower() for row in info}
                    if info and not any(row[1].lower() == "id" and row[2].upper() == "INTEGER" and row[5] == 1
                                        for row in info):
                        raise StoreError(f"log store {self.path}: in table {table}, id is not the INTEGER "
                                         f"PRIMARY KEY; is this a TMPS3 Management Program log store?")
                    if not present:
                        raise StoreError(f"log store {self.path}: no table {table} (needed for {kind}); "
                                         f"is this a TMPS3 Management Program log store?")
                    missing = sorted(columns - present)
                    if missing:
                        raise StoreError(f"log store {self.path}: table {table} has no column {missing[0]} "
                                         f"(needed for {kind}); is this a TMPS3 Management Program log store?")

    def query(self, sql: str, params: Sequence) -> list:
        db = self.connection()
        with store_errors(self.path, self.timeout):
            try:
                return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as e:
                if "decode" not in str(e) or db.text_factory is tolerant_text:
                    raise
                log.debug("invalid UTF-8 in the store; reading text with replacement characters")
                db.text_factory = tolerant_text
                return db.execute(sql, params).fetchall()

    def bounds(self, spec: KindSpec, after_id: Optional[int] = None, page: int = STORE_PAGE) -> Iterator[tuple]:
        """(after, last) id ranges of the kind's table holding `page` rows each, in id order,
        never OFFSET from the start; rows added while they are read wait for the next run.
        From the first row when after_id is None (ids may be 0 or negative)."""
        after_id = self.min_id(spec) - 1 if after_id is None else after_id
        step = f"SELECT id FROM {spec.table} WHERE id > ? ORDER BY id LIMIT 1 OFFSET {page - 1}"
        while True:
            found = self.query(step, [after_id])
            last = found[0][0] if found else self.max_id(spec)
            if last <= after_id:
                return
            yield after_id, last
            after_id = last

    def rows(self, spec: KindSpec, select_list: str, bounds: tuple, where: str = "", params: Sequence = ()) -> list:
        """The kind's rows with an id in (after, last] that pass `where`, in id order."""
        sql = (f"SELECT {select_list} FROM {spec.source} WHERE {spec.alias}.id > ? AND {spec.alias}.id <= ?"
               f"{' AND ' + where if where else ''} ORDER BY {spec.alias}.id")
        return self.query(sql, [*bounds, *params])

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """The queries inside see the store as of one moment (one read transaction)."""
        db = self.connection()
        with store_errors(self.path, self.timeout):
            db.execute("BEGIN")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("COMMIT")

    def page(self, spec: KindSpec, page_select: str, bounds: tuple, where: str = "",
             params: Sequence = ()) -> Optional[list]:
        """One aggregate over the rows of (after, last]: page_select ends inside a subquery
        whose rows come in id order, which group_concat keeps. None when the page is too long
        to join (values of hundreds of KB): then it is read row by row."""
        sql = (f"SELECT {page_select} FROM {spec.source} WHERE {spec.alias}.id > ? AND {spec.alias}.id <= ?"
               f"{' AND ' + where if where else ''} ORDER BY {spec.alias}.id)")
        try:
            return self.query(sql, [*bounds, *params])
        except PageTooBig:
            return None

    def count(self, spec: KindSpec, where: str = "", params: Sequence = (), after_id: Optional[int] = None) -> int:
        after_id = self.min_id(spec) - 1 if after_id is None else after_id
        sql = (f"SELECT count(*) FROM {spec.source} WHERE {spec.alias}.id > ?"
               f"{' AND ' + where if where else ''}")
        return self.query(sql, [after_id, *params])[0][0]

    def first_id_since(self, spec: KindSpec, imported_utc: str) -> Optional[int]:
        """The id from which rows imported at or after that UTC time start (None: there are none)."""
        rows = self.query(f"SELECT min(id) FROM {spec.table} WHERE imported_at >= ?", [imported_utc])
        return rows[0][0]

    def first_id_reused(self, spec: KindSpec, after: int, imported_utc: str) -> Optional[int]:
        """The first id at or below `after` that a row imported later than `imported_utc` holds:
        after a purge of the newest rows SQLite hands their ids out again (INTEGER PRIMARY KEY
        without AUTOINCREMENT). None in the usual case, where the row `after` is still the one sent."""
        same = self.query(f"SELECT 1 FROM {spec.table} WHERE id = ? AND imported_at IS ?", [after, imported_utc])
        if same:
            return None
        first = self.query(f"SELECT min(id) FROM {spec.table} WHERE imported_at > ?", [imported_utc])[0][0]
        return first if first is not None and first <= after else None

    def min_id(self, spec: KindSpec) -> int:
        """The first id (ids may be 0 or negative); 1 for an empty table."""
        first = self.query(f"SELECT coalesce(min(id), 1) FROM {spec.table}", [])[0][0]
        return max(first, -2**63 + 1)   # (the very lowest id SQLite has cannot be "after" another)

    def imported_at(self, spec: KindSpec, record_id: int) -> Optional[str]:
        rows = self.query(f"SELECT imported_at FROM {spec.table} WHERE id = ?", [record_id])
        return as_text(rows[0][0]) if rows else None

    def max_id(self, spec: KindSpec) -> int:
        return self.query(f"SELECT coalesce(max(id), 0) FROM {spec.table}", [])[0][0]


def urllib_quote_path(path: str) -> str:
    return urllib.request.pathname2url(os.path.abspath(path))


def check_store_file(path: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(16)
    except FileNotFoundError:
        raise StoreError(f"log store {path}: not found; set InstalledFolder in config.ini to the "
                         f"Management Program's folder (the one holding Data\\tmps3log.db)") from None
    except OSError as e:
        raise StoreError(f"log store {path}: cannot be read ({e.strerror}); check that this account may read it") from None
    if magic != b"SQLite format 3\x00":
        raise StoreError(f"log store {path}: not an SQLite log store; check InstalledFolder in config.ini")


# The filter functions get the column's bytes (CAST AS BLOB): SQLite would hand a Python
# function a str, and a buggy endpoint's invalid UTF-8 would make that raise mid-export.
def fold_text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else tolerant_text(value).casefold()


def ipv4_number(value: Optional[bytes]) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(ipaddress.IPv4Address(tolerant_text(value).strip()))
    except ValueError:
        return None


def export_filter(spec: KindSpec, options: Options) -> tuple:
    """SQL condition and parameters for --date, --ip, --netmask and --hostname on any kind."""
    clauses, params = [], []
    if options.date_range:
        clauses.append(f"{spec.time_expr} >= ? AND {spec.time_expr} < ?")
        params += list(options.date_range)
    if options.ip:
        clauses.append(f"siem_ipv4(CAST({spec.ip_expr} AS BLOB)) = ?")
        params.append(int(ipaddress.IPv4Address(options.ip)))
    if options.network:
        clauses.append(f"siem_ipv4(CAST({spec.ip_expr} AS BLOB)) BETWEEN ? AND ?")
        params += [int(options.network.network_address), int(options.network.broadcast_address)]
    if options.hostname:
        clauses.append(f"siem_fold(CAST({spec.host_expr} AS BLOB)) = ?")
        params.append(options.hostname.casefold())
    return " AND ".join(clauses), params


# --- records -----------------------------------------------------------------

class Record(NamedTuple):
    """One rendered log record: its place in the store, what syslog and HEC need, and its line
    (LEEF without line end, or a CSV row with its CRLF)."""
    kind: str
    id: int
    imported_at: str
    host: Optional[str]
    time: Optional[str]
    event_id: int
    sev: int
    line: str


def as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# C0 controls become Unicode control pictures (TAB -> U+2409), DEL -> U+2421, and the C1
# controls, U+2028 and U+2029 -> U+FFFD: no value can end a line, split a LEEF attribute or
# forge a record, whatever an endpoint wrote into its host, user or file names.
CONTROL_TABLE = {c: 0x2400 + c for c in range(0x20)}
CONTROL_TABLE.update({0x7F: 0x2421, 0x2028: 0xFFFD, 0x2029: 0xFFFD})
CONTROL_TABLE.update({c: 0xFFFD for c in range(0x80, 0xA0)})


def make_cleaner(delimiter: str = "\t") -> Callable[[str], str]:
    """A value cleaner; a printable LEEF delimiter inside a value becomes its full-width twin (^ -> ＾)."""
    table = dict(CONTROL_TABLE)
    unsafe = "\x00-\x1f\x7f-\x9f\u2028\u2029"
    if delimiter != "\t":
        table[ord(delimiter)] = ord(delimiter) + 0xFEE0
        unsafe += re.escape(delimiter)
    needs_cleaning = re.compile(f"[{unsafe}]").search

    def clean(text: str) -> str:
        return text.translate(table) if needs_cleaning(text) else text
    return clean


clean_value = make_cleaner()
CSV_TIME_FORMAT = "yyyy-MM-dd HH:mm:ss"


@dataclasses.dataclass(frozen=True)
class LeefStyle:
    """How LEEF lines are written: the delimiter and the time pattern, and what follows from them."""
    delimiter: str
    time_format: str

    @classmethod
    def from_config(cls, config: Config) -> "LeefStyle":
        return cls(config.leef_delimiter, config.leef_time_format)

    @functools.cached_property
    def clean(self) -> Callable[[str], str]:
        return make_cleaner(self.delimiter)

    @functools.cached_property
    def write_time(self) -> Callable[[dt.datetime], str]:
        return compile_java_time_pattern(self.time_format)

    @functools.cached_property
    def sql_times(self) -> bool:
        """SQLite can write the times (the pattern has no zone letters)."""
        return java_time_sql(self.time_format, "x") is not None

    @functools.cached_property
    def unsafe(self) -> Callable:
        """Finds what must not stand raw in a line, but the delimiter (which is counted)."""
        chars = "\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029" + ("" if self.delimiter == "\t" else "\t")
        return re.compile(f"[{chars}]").search

    @functools.cached_property
    def headers(self) -> dict:
        return {event: LEEF_HEADER.format(event=event, delim=f"x{ord(self.delimiter):02X}")
                for event in DEFAULT_SEVERITY}


def with_sev_and_event(spec: KindSpec, values: Sequence[str], sev: int, event_id: int) -> list:
    """The kind's values (FORMAT left out) with sev and eventId in their places."""
    at = spec.sev_at
    return [*values[:at], str(sev), str(event_id), *values[at:]]


def render_leef(spec: KindSpec, values: Sequence[str], event_id: int, sev: int, style: LeefStyle) -> str:
    """A record as one LEEF 2.0 line (without line end), from its values as the store gave them."""
    values = with_sev_and_event(spec, values, sev, event_id)
    roles = iter(role for _key, role, _expr in spec.fields if role != FORMAT)
    attributes, values = [], iter(values)
    for key, role, _expr in spec.fields:
        if role == FORMAT:
            text = style.time_format
        else:
            text = next(values)
            if next(roles) == TIME and not style.sql_times:
                moment = parse_store_time(text)
                text = style.write_time(moment) if moment else text
        attributes.append(f"{key}={style.clean(text)}")
    return style.headers[event_id] + style.delimiter.join(attributes)


def csv_header(spec: KindSpec) -> list:
    return [key for key, role, _expr in spec.fields if role != FORMAT]


# A cell that starts like a formula gets a leading ' (OWASP, CSV injection), unless it is a
# plain number (as SQLite writes one: -5, -1.5e+18, -Inf): application names and paths come
# from scanned, possibly hostile endpoints.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[-+](?:[0-9][0-9.]*(?:e[-+]?[0-9]+)?|Inf)", re.IGNORECASE).fullmatch
CONTROL = re.compile("[\x00-\x1e\x7f-\x9f\u2028\u2029]").search
FORMULA_AFTER_SEPARATOR = re.compile("\x1f[-=+@]").search


def csv_cell(raw: str) -> str:
    text = clean_value(raw)
    return "'" + text if raw.startswith(FORMULA_START) and not PLAIN_NUMBER(raw) else text


def csv_cells(spec: KindSpec, values: Sequence[str], event_id: int, sev: int) -> tuple:
    """The cells of a CSV row; one search over the row finds the rare cell to clean or neutralise."""
    joined = "\x1f".join(values)   # one search per row instead of one per cell
    if (CONTROL(joined) or FORMULA_AFTER_SEPARATOR(joined) or joined[:1] in ("-", "=", "+", "@")
            or joined.count("\x1f") != len(values) - 1):
        values = [csv_cell(v) for v in values]
    at = spec.sev_at
    return (*values[:at], sev, event_id, *values[at:])


# --- the same renderings, done by SQLite -------------------------------------
# Python pays for every value and every byte it touches, so SQLite writes the lines: each in one
# printf (|| would copy the growing line once per part), a page of them joined by group_concat,
# so that one SQLite call without Python's lock makes a page and two threads use both cores.
# Python checks the page at once; a page holding something to clean, or a record whose event
# id needs Python's judgement, is read again row by row and those records are rendered from
# their values by render_leef or render_csv: both paths give the same bytes (tested).

def printf_sql(parts: Sequence[tuple]) -> str:
    """SQL writing (literal text, expression or None) parts in one pass. printf's %s writes a
    value as CAST(... AS TEXT) does, NULL as nothing, but stops at a NUL character (odd_sql)."""
    pattern, args = [], []
    for literal, expr in parts:
        pattern.append(literal.replace("%", "%%"))
        if expr is not None:
            pattern.append("%s")
            args.append(expr)
    return f"printf({', '.join([sql_literal(''.join(pattern)), *args])})"


def csv_quoted_sql(expr: str) -> str:
    """RFC 4180 quoting as csv.writer does it: only a cell holding a comma or a quote."""
    return (f"""CASE WHEN instr({expr}, ',') OR instr({expr}, '"') """
            f"""THEN '"' || replace({expr}, '"', '""') || '"' ELSE {expr} END""")


def odd_sql(spec: KindSpec, csv_cells: bool) -> str:
    """Whether a record needs Python: its event id is not plain, a value holds a NUL character
    (printf would silently drop the rest), a CSV cell starts like a formula, or a LEEF time
    is there but is not one (time_pieces_sql)."""
    tests = [f"{event_id_sql(spec)} IS NULL"]
    for _key, role, expr in spec.fields:
        if expr:
            tests.append(f"instr({expr}, char(0))")
            if csv_cells:
                tests.append(f"{expr} GLOB '[-=+@]*'")
            elif role == TIME:
                valid = VALID_TIME_SQL.replace("{e}", f"CAST({expr} AS TEXT)")
                tests.append(f"({expr} IS NOT NULL AND NOT coalesce({valid}, 0))")
    return f"({' OR '.join(tests)})"


# The event id in SQL where the inputs are plain (whole numbers, known texts); NULL leaves the
# record to scan_event_id / detection_event_id, which judge every case.
EVENT_ID_SQL = {
    "scannedlog": """CASE WHEN s.scanned_status = 'Scan canceled' THEN 1003
        WHEN s.scanned_status = 'Scan suspended' THEN 1004
        WHEN typeof(s.infected_files) <> 'integer' THEN NULL WHEN s.infected_files = 0 THEN 1000
        WHEN typeof(s.fixed_files) <> 'integer' THEN NULL
        WHEN s.fixed_files >= s.infected_files AND s.infected_files > 0 THEN 1001 ELSE 1002 END""",
    "detectedlog": "CASE WHEN typeof(d.threat_risk) = 'integer' AND d.threat_risk BETWEEN 0 AND 2 THEN "
                   "2000 + 4 * d.threat_risk + CASE d.taken_act_result "
                   + " ".join(f"WHEN {sql_literal(r)} THEN {i}" for i, r in enumerate(DETECTION_RESULTS)) + " END END",
}


def event_id_sql(spec: KindSpec) -> str:
    return EVENT_ID_SQL.get(spec.name) or str(spec.event_id())


def severity_sql(event_sql: str, severity: dict) -> str:
    return f"CASE {event_sql} " + " ".join(f"WHEN {e} THEN {s}" for e, s in severity.items()) + " END"


def line_sql(spec: KindSpec, severity: dict, cell: Callable[[str, str, str], Optional[tuple]],
             separator: str, header: str = "") -> str:
    """SQL of a whole line; cell(key, role, expression) gives a cell's (literal,
    expression) part, or None to leave it out; `header` holds {event} where the event id goes."""
    event = event_id_sql(spec)
    before, _, after = header.partition("{event}")
    parts = [(before, event), (after, None)] if header else []
    cells = [(f"{key}=" if header else "", severity_sql(event, severity)) if role == SEV
             else (f"{key}=" if header else "", event) if role == EVENT
             else cell(key, role, expr) for key, role, expr in spec.fields]
    for i, cell_parts in enumerate(c for c in cells if c):
        cell_parts = cell_parts if isinstance(cell_parts, list) else [cell_parts]
        parts += [(separator, None), *cell_parts] if i else cell_parts
    return printf_sql(parts)


def leef_line_sql(spec: KindSpec, style: LeefStyle, severity: dict) -> str:
    def cell(key: str, role: str, expr: str):
        if role == FORMAT:
            return f"{key}={style.clean(style.time_format)}", None
        if role == TIME:
            return [(f"{key}=", None), *time_pieces_sql(style.time_format, expr)]
        return f"{key}=", expr
    header = LEEF_HEADER.format(event="{event}", delim=f"x{ord(style.delimiter):02X}")
    return line_sql(spec, severity, cell, style.delimiter, header)


def time_pieces_sql(pattern: str, expr: str) -> list:
    """A store time written as the pattern says, as printf parts of the line itself
    (java_time_slices). A NULL time writes nothing; a time that is not one is left to Python
    (odd_sql)."""
    text = f"CAST({expr} AS TEXT)"
    return [("", f"CASE WHEN {expr} IS NOT NULL THEN {sql_literal(literal) if sql is None else sql} END"
                 .replace("{e}", text)) for literal, sql in java_time_slices(pattern)]


def csv_line_sql(spec: KindSpec, severity: dict) -> str:
    def cell(_key: str, role: str, expr: str) -> Optional[tuple]:
        if role == FORMAT:
            return None
        return "", java_time_sql(CSV_TIME_FORMAT, expr) if role == TIME else csv_quoted_sql(expr)
    return line_sql(spec, severity, cell, ",")


C0_BYTES = bytes(range(0x20)) + b"\x7f"
C1_OR_LINE_SEPARATOR = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]").search


@dataclasses.dataclass(frozen=True)
class LineCheck:
    """What a page of lines written by SQLite may hold: exactly `controls` control characters a
    line (LEEF's TABs, the line end), `delimiters` of a printable delimiter, and valid UTF-8
    without C1 controls, U+2028 or U+2029."""
    controls: int
    delimiter: bytes = b""
    delimiters: int = 0

    def passes(self, text: bytes, lines: int) -> bool:
        if len(text) - len(text.translate(None, C0_BYTES)) != lines * self.controls:
            return False
        if self.delimiter and text.count(self.delimiter) != lines * self.delimiters:
            return False
        if not text.isascii():
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                return False
            return not C1_OR_LINE_SEPARATOR(text)
        return True


def render_csv(spec: KindSpec, values: Sequence[str], event_id: int, sev: int) -> str:
    """A record as one CSV row (without line end), from its values as the store gave them."""
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerow(csv_cells(spec, values, event_id, sev))
    return out.getvalue()[:-1]


def in_order(pool: concurrent.futures.Executor, work: Callable, items: Iterable, ahead: int = 4) -> Iterator:
    """work(item) for each item on the pool's threads, the results in the items' order, at most
    `ahead` of them waiting, so memory stays flat."""
    waiting = collections.deque()
    try:
        for item in items:
            waiting.append(pool.submit(work, item))
            if len(waiting) >= ahead:
                yield waiting.popleft().result()
        while waiting:
            yield waiting.popleft().result()
    finally:
        for future in waiting:      # the reader stopped early: no more pages
            future.cancel()
        concurrent.futures.wait(waiting)


class KindReader:
    """Reads one kind from the store as rendered lines: LEEF in a style, or CSV (style None)."""

    def __init__(self, store: Store, spec: KindSpec, severity: dict, style: Optional[LeefStyle]):
        self.store, self.spec, self.severity, self.style = store, spec, severity, style
        meta = [f"{spec.alias}.id", f"{spec.alias}.imported_at", spec.host_expr, spec.time_expr, *spec.event_exprs]
        self.first_value = len(meta)
        if style is None:
            self.values_select = spec.select_list(CSV_TIME_FORMAT)
            line, self.end = csv_line_sql(spec, severity), b"\r\n"
            self.check = LineCheck(controls=2)
            self.fast = True
        else:
            self.values_select = spec.select_list(style.time_format if style.sql_times else None)
            self.end = b"\n"
            line = leef_line_sql(spec, style, severity) if style.sql_times else "NULL"   # (zones: Python writes)
            separators = len(spec.fields) - 1
            tab = style.delimiter == "\t"
            in_header = style.headers[3000].count(style.delimiter)   # '|' is in LEEF's header
            self.check = LineCheck(controls=1 + separators * tab, delimiter=b"" if tab else style.delimiter.encode(),
                                   delimiters=separators + in_header)
            self.fast = style.sql_times
        odd = odd_sql(spec, csv_cells=style is None)
        self.select = ", ".join(meta + [f"CAST({line} AS BLOB)", odd]) if self.fast else self.values_select
        self.meta_select, self.end_text = ", ".join(meta), self.end.decode()
        self.page_select = (f"count(*), CAST(group_concat(line, {sql_literal(self.end_text)}) AS BLOB), total(odd) "
                            f"FROM (SELECT {line} AS line, {odd} AS odd")
        log.debug("SQL %s: SELECT %s FROM %s", spec.name, self.select, spec.source)

    def pages(self, where: str = "", params: Sequence = (), after_id: Optional[int] = None) -> Iterator[tuple]:
        """(records, bytes) per page: the lines, each ended by LF (LEEF) or CRLF (CSV)."""
        def read(bounds: tuple) -> tuple:
            whole = self.whole_page(bounds, where, params)
            if whole:
                return whole
            rows = self.store.rows(self.spec, self.select, bounds, where, params)
            return len(rows), self.page_text(rows)
        return in_order(self.store.pool, read, self.store.bounds(self.spec, after_id))

    def records(self, where: str = "", params: Sequence = (), after_id: Optional[int] = None) -> Iterator[Record]:
        def read(bounds: tuple) -> list:
            with self.store.snapshot():   # the page and its records' ids as of one moment
                whole = self.whole_page(bounds, where, params)
                if whole:
                    meta = self.store.rows(self.spec, self.meta_select, bounds, where, params) if whole[0] else []
                    return [self.record(row, line) for row, line in zip(meta, whole[1].decode("utf-8").split(self.end_text))]
                rows = self.store.rows(self.spec, self.select, bounds, where, params)
            lines = self.page_text(rows).decode("utf-8").split(self.end_text)
            return [self.record(row, line) for row, line in zip(rows, lines)]
        for page in in_order(self.store.pool, read, self.store.bounds(self.spec, after_id)):
            yield from page

    def whole_page(self, bounds: tuple, where: str, params: Sequence) -> Optional[tuple]:
        """(records, lines each ended) of a page SQLite wrote whole and that passes the check;
        None when it is to be read row by row (a record for Python, or too long to join)."""
        page = self.store.page(self.spec, self.page_select, bounds, where, params) if self.fast else None
        if not page:
            return None
        (count, text, odd), = page
        if not count:
            return 0, b""
        text += self.end
        return (count, text) if not odd and self.check.passes(text, count) else None

    def record(self, row: tuple, line: str) -> Record:
        event_id = self.event_id(row)
        return Record(self.spec.name, row[0], row[1], as_text(row[2]) or None, as_text(row[3]) or None,
                      event_id, self.severity[event_id], line)

    def event_id(self, row: tuple) -> int:
        return self.spec.event_id(*row[4:self.first_value])

    def page_text(self, rows: Sequence[tuple]) -> bytes:
        """The lines of rows read with self.select, checked at once, rendered again where needed."""
        if not rows:
            return b""
        if not self.fast:
            return b"".join(self.render_row(row) + self.end for row in rows)
        text = self.end.join([row[-2] for row in rows]) + self.end
        if not any(row[-1] for row in rows) and self.check.passes(text, len(rows)):
            return text
        lines = [row[-2] if not row[-1] and self.check.passes(row[-2] + self.end, 1)
                 else self.render_again(row[0]) for row in rows]
        return b"".join(line + self.end for line in lines)

    def render(self, values: Sequence[str], event_id: int, sev: int) -> str:
        if self.style is None:
            return render_csv(self.spec, values, event_id, sev)
        return render_leef(self.spec, values, event_id, sev, self.style)

    def render_row(self, row: tuple) -> bytes:
        event_id = self.event_id(row)
        return self.render(row[self.first_value:], event_id, self.severity[event_id]).encode("utf-8")

    def render_again(self, record_id: int) -> bytes:
        spec = self.spec
        row, = self.store.query(f"SELECT {self.values_select} FROM {spec.source} WHERE {spec.alias}.id = ?",
                                [record_id])
        return self.render_row(row)


# --- export ------------------------------------------------------------------

def output_folder(options: Options, config: Config, default: str) -> str:
    """--output, else <default>/ beside config.ini; relative paths count from config.ini's folder."""
    folder = os.path.join(config.folder, options.output or default)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output folder {folder}: cannot be created ({e.strerror}); choose another with --output") from None
    return os.path.normpath(folder)


def new_file_name(folder: str, kind: str, stamp: str, extension: str) -> str:
    """<kind>_<yyyyMMdd_HHmmss>.<ext>, with _2, _3... when a run in the same second made one."""
    path = os.path.join(folder, f"{kind}_{stamp}.{extension}")
    n = 1
    while os.path.exists(path) or os.path.exists(path + ".part"):
        n += 1
        path = os.path.join(folder, f"{kind}_{stamp}_{n}.{extension}")
    return path


def file_stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d_%H%M%S")


@contextlib.contextmanager
def output_file(path: str):
    """Written as <path>.part and renamed when complete: a half-written export never looks whole."""
    partial = path + ".part"
    try:
        with open(partial, "wb") as f:
            yield f
        os.replace(partial, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise ConfigError(f"{path}: cannot be written ({e.strerror}); check the disk and the folder's permissions") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


def with_progress(items: Iterator, total: Callable[[], int], label: str,
                  weight: Callable = lambda item: 1) -> Iterator:
    """A progress bar on stderr when a person watches (stdout is a terminal) and tqdm is
    installed; nothing in a scheduled task."""
    if not sys.stdout.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items

    def counted() -> Iterator:
        with tqdm(total=total(), desc=label, unit=" records", leave=False, file=sys.stderr, mininterval=0.5) as bar:
            for item in items:
                yield item
                bar.update(weight(item))
    return counted()


def write_pages(f, pages: Iterable[tuple]) -> int:
    count = 0
    for records, text in pages:
        f.write(text)
        count += records
    return count


def run_export(options: Options, config: Config) -> int:
    folder = output_folder(options, config, "export")
    style = LeefStyle.from_config(config)
    stamp = file_stamp()
    with Store(config.store_path) as store:
        store.check_schema(options.kinds)
        for kind in options.kinds:
            spec = KIND_SPECS[kind]
            started = time.monotonic()
            where, params = export_filter(spec, options)
            csv_wanted = options.format == "csv"
            pages = KindReader(store, spec, config.severity, None if csv_wanted else style).pages(where, params)
            pages = with_progress(pages, lambda: store.count(spec, where, params), kind, weight=lambda page: page[0])
            path = new_file_name(folder, kind, stamp, options.format)
            with output_file(path) as f:
                if csv_wanted:
                    f.write(codecs.BOM_UTF8 + ",".join(csv_header(spec)).encode() + b"\r\n")
                count = write_pages(f, pages)
            log.debug("%s: %d records in %.2f s -> %s", kind, count, time.monotonic() - started, path)
            say(f"{kind}: {count} records -> {path}")
    return EXIT_OK


def say(line: str) -> None:
    print(line, flush=True)


# --- senders -----------------------------------------------------------------

# LEEF sev (1-10) -> syslog severity (RFC 5424 table 2).
SYSLOG_SEVERITY = {1: 6, 2: 6, 3: 5, 4: 5, 5: 4, 6: 4, 7: 3, 8: 3, 9: 2, 10: 1}


@dataclasses.dataclass
class Delivery:
    """What one send() achieved; the run adds them up per kind."""
    delivered: int = 0
    quarantined: int = 0
    truncated: int = 0
    bytes: int = 0

    def add(self, other: "Delivery") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


class Sender:
    """One shape for the three SIEMs: open, send batches of rendered records, close."""

    def __enter__(self) -> "Sender":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Check what can be checked before reading the store; connections are made lazily."""

    def send(self, kind: str, batch: Sequence[Record]) -> Delivery:
        raise NotImplementedError

    def close(self) -> None:
        """Safe to call twice."""


def syslog_priority(facility: int, sev: int) -> int:
    """PRI = facility * 8 + severity (RFC 5424 6.2.1)."""
    return facility * 8 + SYSLOG_SEVERITY.get(sev, 3)


def rfc3164_header(priority: int, now: dt.datetime, host: str) -> str:
    """QRadar's header: <PRI>Mmm dd HH:mm:ss HOST, the day padded with a space."""
    return f"<{priority}>{MONTH_NAMES[now.month - 1][:3]} {now.day:2d} {now:%H:%M:%S} {host} "


def rfc5424_header(priority: int, now: dt.datetime, host: str, msgid: str) -> str:
    """rsyslog's header: APP-NAME TMPS3 keeps rsyslog from taking 'LEEF:' as a tag."""
    return f"<{priority}>1 {now.isoformat(timespec='milliseconds')} {host} TMPS3 - {msgid} - "


def fit_message(message: bytes, limit: int) -> tuple:
    """The message, or its head cut on a character boundary with a marker; (bytes, was_cut)."""
    if len(message) <= limit:
        return message, False
    marker = f" [cut by siem_tool: {len(message)} bytes]".encode()
    head = message[:max(0, limit - len(marker))].decode("utf-8", "ignore").encode()
    return head + marker, True


def frame(message: bytes, framing: str) -> bytes:
    """LF-terminated (what QRadar reads), RFC 6587 octet counting, or none (a UDP datagram)."""
    if framing == "octet-counting":
        return b"%d %s" % (len(message), message)
    return message + b"\n" if framing == "lf" else message


def syslog_host_name() -> str:
    """This PC's name for an RFC 5424 HOSTNAME: printable ASCII without spaces, else '-'."""
    name = socket.gethostname()
    return name if name and name.isascii() and name.isprintable() and " " not in name else "-"


def describe_os_error(e: OSError) -> str:
    if isinstance(e, socket.gaierror):
        return "the name cannot be resolved; check ServerAddress"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused; check ServerAddress/ServerPort and that the server listens"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "no answer in time; check the address, the port and the firewall"
    if (isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))
            or e.errno in (errno.ENOTCONN, 10057)):    # (10057: Windows' WSAENOTCONN)
        return "the server closed the connection; check the server's log"
    return f"{e.strerror or e}; check the network and the server"


class SyslogSender(Sender):
    """Common to UDP, TCP and TLS: PRI, the header of this SIEM, the size limit."""

    def __init__(self, settings: SyslogSettings, facility: int):
        self.settings, self.facility = settings, facility
        self.host_name = syslog_host_name()

    def messages(self, kind: str, batch: Sequence[Record], local_ip: str) -> tuple:
        """The unframed bytes of a batch's messages and how many were cut. One time stamp per
        batch, so the header differs only by priority."""
        now = dt.datetime.now().astimezone()
        headers = {sev: self.header(syslog_priority(self.facility, sev), now, local_ip, kind).encode()
                   for sev in {item.sev for item in batch}}
        limit = self.settings.max_message
        out = [headers[item.sev] + item.line.encode("utf-8") for item in batch]
        cut = 0
        for i, message in enumerate(out):
            if len(message) > limit:
                out[i], _ = fit_message(message, limit)
                cut += 1
        return out, cut

    def header(self, priority: int, now: dt.datetime, local_ip: str, kind: str) -> str:
        if self.settings.header == "rfc3164":
            return rfc3164_header(priority, now, local_ip)
        return rfc5424_header(priority, now, self.host_name if self.host_name != "-" else local_ip, kind)

    def fail(self, why: str, delivered: int = 0) -> SiemError:
        return SiemError(f"{self.settings.label}: {why}", delivered)


class UdpSender(SyslogSender):
    """One record per datagram, paced: UDP cannot tell whether the server kept up."""

    sock = None

    def connect(self) -> socket.socket:
        if self.sock is None:
            s = self.settings
            try:
                family, kind, proto, _name, address = socket.getaddrinfo(s.address, s.port, type=socket.SOCK_DGRAM)[0]
                self.sock = socket.socket(family, kind, proto)
                self.sock.connect(address)
            except OSError as e:
                self.close()
                raise self.fail(describe_os_error(e)) from None
            self.started, self.sent = time.monotonic(), 0
        return self.sock

    def send(self, kind: str, batch: Sequence[Record]) -> Delivery:
        sock = self.connect()
        messages, cut = self.messages(kind, batch, sock.getsockname()[0])
        size = 0
        for i, message in enumerate(messages):
            try:
                sock.send(message)
            except OSError as e:
                raise self.fail(describe_os_error(e), delivered=0) from None
            size += len(message)
            self.sent += 1
            if self.sent % 50 == 0:
                self.pace()
        return Delivery(len(batch), 0, cut, size)

    def pace(self) -> None:
        ahead = self.started + self.sent / self.settings.udp_rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class StreamSender(SyslogSender):
    """TCP or TLS. Each batch goes over its own connection, closed cleanly: the server closing
    its side after reading ours is the only proof plain syslog gives that it read every byte,
    so a batch counts as delivered only then."""

    def __init__(self, settings: SyslogSettings, facility: int):
        super().__init__(settings, facility)
        self.tls = TlsClient(settings.cert_file, settings.server_name, settings.address,
                             settings.label) if settings.protocol == "TLS" else None

    def dial(self) -> socket.socket:
        s = self.settings
        try:
            return socket.create_connection((s.address, s.port), timeout=s.timeout)
        except OSError as e:
            raise self.fail(describe_os_error(e)) from None

    def connect(self) -> socket.socket:
        return self.tls.connect(self.dial, self.settings.timeout) if self.tls else self.dial()

    def send(self, kind: str, batch: Sequence[Record]) -> Delivery:
        sock = self.connect()
        try:
            messages, cut = self.messages(kind, batch, sock.getsockname()[0])
            payload = b"".join(frame(m, self.settings.framing) for m in messages)
            sock.sendall(payload)
            self.close_and_confirm(sock)
        except ssl.SSLError as e:
            raise self.fail(f"TLS failed while sending ({e.reason or e}); check the server's log") from None
        except OSError as e:
            raise self.fail(describe_os_error(e)) from None
        finally:
            sock.close()
        return Delivery(len(batch), 0, cut, len(payload))

    def close_and_confirm(self, sock: socket.socket) -> None:
        """Half-close and wait until the server closes too, i.e. has read everything; within
        Timeout in all, so that a server trickling bytes cannot hold the run (and its lock)."""
        deadline = time.monotonic() + self.settings.timeout
        if isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(ssl.SSLError, OSError):
                sock = sock.unwrap()  # close_notify first, or rsyslog calls the close improper
        sock.shutdown(socket.SHUT_WR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.fail(f"the server did not close the connection within Timeout "
                                f"({self.settings.timeout:g} s) after a batch, so its delivery is not sure")
            sock.settimeout(left)
            if not sock.recv(4096):
                return


class TlsClient:
    """TLS 1.2+ with verification always on; trust comes from CertFile alone.

    With TLSServerName, the certificate must chain to CertFile and carry that name. Without it,
    it must carry ServerAddress, or be exactly a certificate in CertFile: QRadar presents a
    self-signed certificate issued for its host name while admins type its IP address.
    """

    def __init__(self, cert_file: str, server_name: str, address: str, label: str):
        self.cert_file, self.server_name, self.address, self.label = cert_file, server_name, address, label
        self.pins = certificate_fingerprints(cert_file) if cert_file else set()
        self.pinned = False   # learnt on the first connection, kept for the run
        self.contexts = {}    # a send opens a connection per batch: CertFile is loaded once
        self.context(True)    # a damaged CertFile is a config error, found before any connection

    def context(self, check_hostname: bool) -> ssl.SSLContext:
        if check_hostname not in self.contexts:
            self.contexts[check_hostname] = self.new_context(check_hostname)
        return self.contexts[check_hostname]

    def new_context(self, check_hostname: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        # Any certificate in CertFile is a trust anchor, a server's own leaf too, not only a CA.
        context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0x80000)
        if self.cert_file:
            try:
                context.load_verify_locations(cafile=self.cert_file)
            except ssl.SSLError as e:
                raise ConfigError(f"CertFile {self.cert_file}: OpenSSL cannot read a certificate in it "
                                  f"({e.reason or e}); copy the server's certificate there again, in PEM form") from None
        else:
            context.load_default_certs()
        return context

    def connect(self, dial: Callable[[], socket.socket], timeout: float) -> ssl.SSLSocket:
        name = self.server_name or self.address
        if not self.pinned:
            try:
                return self.handshake(dial(), self.context(True), name)
            except ssl.SSLCertVerificationError as e:
                if e.verify_code not in (62, 64) or self.server_name or not self.pins:
                    raise SiemError(f"{self.label}: {explain_certificate_error(e, self)}") from None
                self.pinned = True
        tls = self.handshake(dial(), self.context(False), name)
        fingerprint = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
        if fingerprint not in self.pins:
            tls.close()
            raise SiemError(f"{self.label}: the server's certificate (SHA-256 {fingerprint[:16]}...) is not the one "
                            f"in CertFile {self.cert_file} and is not issued for {self.address}; copy the "
                            f"server's own certificate to CertFile, or set TLSServerName to the name it carries")
        return tls

    def handshake(self, sock: socket.socket, context: ssl.SSLContext, name: str) -> ssl.SSLSocket:
        try:
            tls = context.wrap_socket(sock, server_hostname=name)
        except ssl.SSLCertVerificationError:
            sock.close()
            raise
        except ssl.SSLError as e:
            sock.close()
            raise SiemError(f"{self.label}: {explain_tls_error(e)}") from None
        except (socket.timeout, TimeoutError):
            sock.close()
            raise SiemError(f"{self.label}: no TLS answer in time; is this a plain (non-TLS) syslog port?") from None
        except OSError as e:
            sock.close()
            raise SiemError(f"{self.label}: TLS handshake failed: {describe_os_error(e)}") from None
        log.debug("%s: %s %s, certificate %s", self.label, tls.version(), tls.cipher()[0],
                  hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())
        return tls


def certificate_fingerprints(path: str) -> set:
    """SHA-256 of each certificate in a PEM file."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            pem = f.read()
    except OSError as e:
        raise ConfigError(f"CertFile {path}: cannot be read ({e.strerror})") from None
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.DOTALL)
    if not blocks:
        raise ConfigError(f"CertFile {path}: no PEM certificate in it; copy the server's certificate "
                          f"(-----BEGIN CERTIFICATE-----) there")
    try:
        return {hashlib.sha256(ssl.PEM_cert_to_DER_cert(block)).hexdigest() for block in blocks}
    except ValueError:   # (binascii.Error is one)
        raise ConfigError(f"CertFile {path}: a certificate in it is damaged; copy the server's certificate "
                          f"there again") from None


def explain_certificate_error(e: ssl.SSLCertVerificationError, tls: TlsClient) -> str:
    code = e.verify_code
    where = f"CertFile {tls.cert_file}" if tls.cert_file else "this PC's trusted CAs"
    if code == 10:
        return "the server's certificate has expired; renew it on the server and copy the new one to CertFile"
    if code == 9:
        return "the server's certificate is not valid yet; check the clocks of this PC and of the server"
    if code in (62, 64):
        return (f"the server's certificate is not issued for {tls.server_name or tls.address}; set TLSServerName "
                f"to the name it carries, or put exactly that certificate in CertFile")
    if code in (18, 19, 20, 21):
        return (f"the server's certificate is neither in nor signed by {where}; copy the server's certificate "
                f"(QRadar: syslog-tls.cert) to CertFile")
    return f"the server's certificate was refused ({e.verify_message}); check CertFile"


def explain_tls_error(e: ssl.SSLError) -> str:
    reason = (e.reason or str(e)).upper()
    if "VERSION" in reason and "WRONG" in reason or "RECORD" in reason or "PACKET_LENGTH" in reason \
            or "HTTP_REQUEST" in reason:
        return "the server did not answer with TLS; is this a plain (non-TLS) syslog port?"
    if "PROTOCOL" in reason or "NO_PROTOCOLS" in reason:
        return "the server offers only TLS older than 1.2, which siem_tool refuses; enable TLS 1.2 or newer on it"
    return f"TLS handshake failed ({e.reason or e}); check the server's TLS settings"


class HecSender(Sender):
    """Splunk HTTP Event Collector: batches of concatenated envelopes, gzip, one keep-alive session."""

    TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
    EVENT_CODES = {6, 12, 13, 15}       # the bad event is named; its neighbours are fine

    def __init__(self, settings: SplunkSettings, facility: int, quarantine_folder: str):
        self.settings, self.facility = settings, facility
        self.quarantine_folder = quarantine_folder
        self.channel = str(uuid.uuid4())
        self.session = None
        self.deadline = time.monotonic() + settings.retry_seconds
        self.tls = TlsClient(settings.cert_file, settings.server_name, settings.address, settings.label)
        host = f"[{settings.address}]" if ":" in settings.address else settings.address
        self.base_url = f"https://{host}:{settings.port}/services/collector"
        self.quarantine_path = None

    def open(self) -> None:
        import requests   # here, not at the top: only Splunk needs it, and it costs every run ~60 ms
        self.session = requests.Session()
        self.session.trust_env = False  # proxies and CA bundles from the environment never apply
        self.session.mount("https://", hec_adapter(self.tls))
        self.session.headers.update({"Authorization": f"Splunk {self.settings.token}",
                                     "X-Splunk-Request-Channel": self.channel,
                                     "User-Agent": f"siem_tool/{__version__}"})

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def envelope(self, kind: str, record: Record) -> bytes:
        """{"time":…,"host":…,"source":"TMPS3","sourcetype":…,"index":…,"event":"<PRI>LEEF…"}: built
        from a template, only the texts through JSON's string encoder (a dict per event through
        json.dumps costs more than all the rest of a send)."""
        epoch = hec_time(record.time, self.settings.time_zone)
        head = "{" if epoch is None else f'{{"time":{epoch!r},'
        if record.host:
            head += f'"host":{json_text(clean_value(record.host))},'
        event = json_text(f"<{syslog_priority(self.facility, record.sev)}>{record.line}")
        return f'{head}"source":"TMPS3","sourcetype":{json_text(self.settings.source_type)},' \
               f'"index":"{kind}","event":{event}}}'.encode("utf-8")

    def send(self, kind: str, batch: Sequence[Record]) -> Delivery:
        envelopes = [self.envelope(kind, item) for item in batch]
        total = Delivery()
        for chunk in chunks_by_size(envelopes, self.settings.batch_bytes):
            try:
                total.add(self.send_chunk(kind, chunk))
            except SiemError as e:
                e.delivered += total.delivered
                raise
        return total

    def send_chunk(self, kind: str, envelopes: Sequence[bytes]) -> Delivery:
        """One POST; an event HEC names as bad goes to quarantine and the rest are sent again.

        HEC has indexed the events before the one it names, so those are not sent twice."""
        total = Delivery()
        start = 0
        while start < len(envelopes):
            try:
                bad = self.post_events(envelopes[start:])
            except SiemError as e:
                e.delivered = start
                raise
            if bad is None:
                total.add(Delivery(len(envelopes) - start, 0, 0, sum(map(len, envelopes[start:]))))
                break
            number, answer = bad
            self.quarantine(kind, envelopes[start + number], answer)
            total.add(Delivery(number + 1, 1, 0, sum(map(len, envelopes[start:start + number]))))
            start += number + 1
        return total

    def post_events(self, envelopes: Sequence[bytes]) -> Optional[tuple]:
        """POST envelopes until accepted; (index, HEC answer) of an event HEC refused, or None."""
        body = b"\n".join(envelopes)
        answer = self.post_with_retries("/event", gzip.compress(body, self.settings.gzip_level))
        if answer.get("code") in self.EVENT_CODES and "invalid-event-number" in answer:
            number = int(answer["invalid-event-number"])
            if 0 <= number < len(envelopes):
                return number, answer
        if answer.get("code") != 0:
            raise SiemError(f"{self.settings.label}: {explain_hec_code(answer)}", kind_only=answer.get("code") == 7)
        if self.settings.use_ack:
            self.wait_for_ack(answer.get("ackId"))
        return None

    def post_with_retries(self, path: str, body: bytes, content_encoding: str = "gzip") -> dict:
        attempt = 0
        while True:
            why, retry_after = self.try_post(path, body, content_encoding)
            if isinstance(why, dict):
                return why
            delay = backoff_delay(attempt, retry_after)
            if time.monotonic() + delay > self.deadline:
                raise SiemError(f"{self.settings.label}: {why}; gave up after {attempt + 1} attempts "
                                f"(RetrySeconds={self.settings.retry_seconds:g})")
            log.debug("HEC: %s; retrying in %.1f s", why, delay)
            time.sleep(delay)
            attempt += 1

    def try_post(self, path: str, body: bytes, content_encoding: str) -> tuple:
        """(HEC's answer, None) when final, or (why, Retry-After) when worth retrying."""
        import requests
        headers = {"Content-Encoding": content_encoding} if content_encoding else {}
        s = self.settings
        try:
            response = self.session.post(self.base_url + path, data=body, headers=headers,
                                         timeout=(s.timeout, s.timeout), verify=self.tls.cert_file or True)
        except requests.exceptions.SSLError as e:
            if self.learn_pinning(e):
                return self.try_post(path, body, content_encoding)
            raise SiemError(f"{s.label}: {explain_requests_tls_error(e, self.tls)}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            return f"cannot reach HEC: {describe_requests_error(e, s.timeout)}", None
        answer = hec_answer(response, s.token)
        log.debug("HEC %s: HTTP %d %s", path, response.status_code, answer)
        code = answer.get("code")
        if response.status_code in self.TRANSIENT_STATUS or code in (8, 9, 18, 19, 20):
            return f"HEC answered HTTP {response.status_code} ({answer.get('text', '')})", \
                retry_after_seconds(response.headers.get("Retry-After"))
        if response.status_code == 413:
            raise SiemError(f"{s.label}: HEC refused a {len(body)}-byte request as too large (HTTP 413); "
                            f"lower BatchBytes in [Splunk]")
        if code is None and "acks" not in answer:
            raise SiemError(f"{s.label}: HTTP {response.status_code} without an HEC answer: the server is not an "
                            f"HTTP Event Collector; check ServerAddress and ServerPort")
        return answer, None

    def learn_pinning(self, e: Exception) -> bool:
        """A name mismatch with a one-certificate CertFile: trust exactly that certificate instead."""
        verify = find_cause(e, ssl.SSLCertVerificationError)
        if (verify is None or verify.verify_code not in (62, 64) or self.tls.pinned or self.tls.server_name
                or len(self.tls.pins) != 1):
            return False
        self.tls.pinned = True
        self.session.mount("https://", hec_adapter(self.tls))
        return True

    def wait_for_ack(self, ack_id) -> None:
        """With indexer acknowledgement, a batch counts only once Splunk says it is indexed."""
        if ack_id is None:
            raise SiemError(f"{self.settings.label}: UseAck is on but HEC gave no ackId; turn on indexer "
                            f"acknowledgement for the token, or set UseAck = no")
        delay = 0.05
        while True:
            answer = self.post_with_retries("/ack", json.dumps({"acks": [ack_id]}).encode(), content_encoding="")
            if answer.get("code", 0) != 0:
                raise SiemError(f"{self.settings.label}: {explain_hec_code(answer)}")
            if answer.get("acks", {}).get(str(ack_id)):
                return
            if time.monotonic() + delay > self.deadline:
                raise SiemError(f"{self.settings.label}: HEC did not acknowledge batch {ack_id} in time; "
                                f"it is sent again next run")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def quarantine(self, kind: str, envelope: bytes, answer: dict) -> None:
        """The refused event and HEC's answer, one JSON line each, for the admin to look at."""
        if self.quarantine_path is None:
            os.makedirs(self.quarantine_folder, exist_ok=True)
            self.quarantine_path = new_file_name(self.quarantine_folder, kind, file_stamp(), "jsonl")
        with open(self.quarantine_path, "ab") as f:
            f.write(envelope + b"\n" + json.dumps({"hec_answer": answer}).encode() + b"\n")
        log.debug("HEC refused one %s event (%s); quarantined in %s", kind, answer, self.quarantine_path)


def hec_adapter(tls: TlsClient):
    """A requests adapter verifying as TlsClient decides: a name to check, or exactly the
    pinned certificate."""
    import requests.adapters

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            kwargs["ssl_minimum_version"] = ssl.TLSVersion.TLSv1_2
            if tls.server_name:
                kwargs["assert_hostname"] = tls.server_name
                kwargs["server_hostname"] = tls.server_name
            elif tls.pinned:
                kwargs["assert_fingerprint"] = next(iter(tls.pins))
            super().init_poolmanager(*args, **kwargs)
    return Adapter()


def chunks_by_size(items: Sequence[bytes], limit: int) -> Iterator[list]:
    """Consecutive runs of items whose joined size stays within limit (an oversized item goes alone)."""
    chunk, size = [], 0
    for item in items:
        if chunk and size + len(item) + 1 > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        yield chunk


@functools.lru_cache(maxsize=4096)    # an asset collection's time serves all its applications
def hec_time(text: Optional[str], zone: Optional[dt.tzinfo]) -> Optional[float]:
    """Epoch seconds of an endpoint time, read in config's zone or this PC's (never milliseconds)."""
    moment = parse_store_time(text)
    if moment is None:
        return None
    epoch = None
    if zone is None:
        with contextlib.suppress(OverflowError, ValueError):    # (Windows: before 1970)
            epoch = time.mktime(moment.timetuple())              # this PC's zone and summer time, in C
    if epoch is None:
        epoch = moment.replace(tzinfo=zone or local_zone(moment)).timestamp()
    return int(epoch) if epoch == int(epoch) else round(epoch, 3)


json_text = json.encoder.encode_basestring    # a str as a JSON string; non-ASCII kept as it is


def hec_answer(response: requests.Response, token: str) -> dict:
    """HEC's answer with each field of the type HEC gives it, the text on one line without the
    token (a proxy or a hostile server may echo it); {} when the body is no HEC answer."""
    try:
        answer = response.json()
    except ValueError:
        return {}
    if not isinstance(answer, dict):
        return {}
    typed = {}
    for key in ("code", "ackId", "invalid-event-number"):
        value = answer.get(key)
        if type(value) is int or (isinstance(value, str) and value.isdigit() and key != "code"):
            typed[key] = int(value)
    if isinstance(answer.get("text"), str):
        text = clean_value(answer["text"])
        typed["text"] = text.replace(token, "(the token)") if token else text
    if isinstance(answer.get("acks"), dict):
        typed["acks"] = {str(k): v is True for k, v in answer["acks"].items()}
    return typed


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def backoff_delay(attempt: int, retry_after: Optional[float]) -> float:
    """Capped exponential backoff with jitter, never shorter than the server's Retry-After."""
    delay = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


HEC_ADVICE = {
    1: "the token is disabled; enable it in Splunk (Settings > Data inputs > HTTP Event Collector)",
    2: "no token was sent; set Token in [Splunk]",
    3: "the Authorization header was refused; set Token in [Splunk] to the token alone",
    4: "the token is not known to Splunk; copy the right Token into [Splunk]",
    5: "an empty request; this is a bug in siem_tool, please report it",
    6: "HEC could not read the data; please report it with the debug log",
    7: "the index does not exist or the token may not write it; create the indexes scannedlog, "
       "detectedlog, assetinfo, applicationinfo, updateinfo and allow them for the token",
    10: "the token wants indexer acknowledgement; set UseAck = yes in [Splunk]",
    11: "the data channel was refused; please report it",
    14: "indexer acknowledgement is off for this token; set UseAck = no in [Splunk]",
    21: "the token is not known to Splunk; copy the right Token into [Splunk]",
    22: "the token is disabled; enable it in Splunk",
}


def explain_hec_code(answer: dict) -> str:
    code = answer.get("code")
    text = answer.get("text", "")
    advice = HEC_ADVICE.get(code, "see Splunk's HEC documentation for this code")
    return f"HEC refused the data with code {code} \"{text}\"; {advice}"


def is_wrapper(e: BaseException) -> bool:
    """requests' and urllib3's own exceptions: some are OSErrors, but the why is inside them."""
    return type(e).__module__.split(".")[0] in ("requests", "urllib3")


def find_cause(e: BaseException, kind: type) -> Optional[BaseException]:
    """Dig the first exception of a kind out of requests' and urllib3's wrappers."""
    seen, todo = set(), [e]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind) and not is_wrapper(current):
            return current
        inner = [getattr(current, "reason", None), current.__cause__, current.__context__,
                 *getattr(current, "args", ())]
        todo += [x for x in inner if isinstance(x, BaseException)]
    return None


def explain_requests_tls_error(e: requests.exceptions.SSLError, tls: TlsClient) -> str:
    verify = find_cause(e, ssl.SSLCertVerificationError)
    if verify is not None:
        return explain_certificate_error(verify, tls)
    ssl_error = find_cause(e, ssl.SSLError)
    if ssl_error is not None:
        return explain_tls_error(ssl_error)
    if "fingerprint" in str(e).lower():
        return (f"the server's certificate is not the one in CertFile {tls.cert_file}; copy the server's own "
                f"certificate to CertFile, or set TLSServerName to the name it carries")
    return f"TLS failed ({e}); check CertFile and TLSServerName"


def describe_requests_error(e: Exception, timeout: float) -> str:
    import requests
    if isinstance(e, requests.exceptions.Timeout):
        return f"no answer within Timeout = {timeout:g} s; check the server's load, or raise Timeout in [Splunk]"
    os_error = find_cause(e, OSError)
    return describe_os_error(os_error) if os_error else "connection failed; check the network and the server"


SENDERS = {
    "qradar": lambda settings, config: StreamSender(settings, config.facility),
    "rsyslog": lambda settings, config: (UdpSender if settings.protocol == "UDP" else StreamSender)(
        settings, config.facility),
    "splunk": lambda settings, config: HecSender(settings, config.facility,
                                                 os.path.join(config.folder, "quarantine")),
}


# --- checkpoint --------------------------------------------------------------

def write_atomically(path: str, data: bytes) -> None:
    """Replace a file so that a crash leaves either the old bytes or the new, never a torn file."""
    folder = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


SECTION_LINE = re.compile(r"\s*\[([^\]]*)\]")
STARTDATE_LINE = re.compile(r"(\s*startdate\s*[=:][ \t]*)(.*?)([ \t]*\r?\n|[ \t]*\r|[ \t]*)$",
                            re.IGNORECASE | re.DOTALL)


def replace_startdate(text: str, value: str) -> str:
    """config.ini's text with only the [General Setting] Startdate value changed."""
    lines = re.findall(r"[^\n]*\n|[^\n]+", text)
    in_general, header_at = False, None
    for i, line in enumerate(lines):
        section = SECTION_LINE.match(line)
        if section:
            in_general = section.group(1).strip().lower() == "general setting"
            header_at = i if in_general else header_at
            continue
        match = STARTDATE_LINE.match(line) if in_general else None
        if match:
            lines[i] = match.group(1) + value + match.group(3)
            return "".join(lines)
    if header_at is None:
        raise ConfigError("config.ini has no [General Setting] section to hold Startdate")
    newline = "\r\n" if "\r\n" in text else "\n"
    if not lines[header_at].endswith("\n"):
        lines[header_at] += newline
    lines.insert(header_at + 1, f"Startdate = {value}{newline}")
    return "".join(lines)


def rewrite_startdate(config: Config, value: str) -> None:
    """Read config.ini afresh (an admin may have edited it meanwhile) and change Startdate alone:
    the bytes around the value are copied, not encoded again (Shift_JIS has characters with
    two codes, and an editor's choice must stay)."""
    original = read_config_bytes(config.path)
    text, codec, bom = decode_config_bytes(original, config.path)
    new = replace_startdate(text, value)
    same_head = len(os.path.commonprefix([text, new]))
    same_tail = len(os.path.commonprefix([text[same_head:][::-1], new[same_head:][::-1]]))
    head = len(bom) + len(text[:same_head].encode(codec))
    tail = len(text[len(text) - same_tail:].encode(codec))
    data = original[:head] + new[same_head:len(new) - same_tail].encode(codec) + original[len(original) - tail:]
    try:
        write_atomically(config.path, data)
    except OSError as e:
        raise ConfigError(f"{config.path}: cannot write the new Startdate ({e.strerror}); "
                          f"the resume point is kept in {state_path(config)}") from None


def state_path(config: Config) -> str:
    return os.path.splitext(config.path)[0] + ".state.json"


class Checkpoint:
    """Where each kind resumes: the id of its last delivered record, kept in a state file beside
    config.ini. Startdate in config.ini follows it for people (import time, this PC's clock); a
    Startdate changed by hand, or --startdate, means "send again from that import time".

    An entry is valid while config.ini's Startdate is the value it was saved against."""

    def __init__(self, config: Config, override: Optional[str]):
        self.config, self.override = config, override
        self.path = state_path(config)
        self.kinds = self.load()
        self.ran, self.advanced = set(), set()

    def load(self) -> dict:
        """The entries of the state file that make sense; a damaged one is left out (its kind
        then resumes from Startdate), never a reason to stop."""
        try:
            with open(self.path, encoding="utf-8") as f:
                kinds = json.load(f).get("kinds")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as e:
            log.debug("state file %s unreadable (%s); resuming from Startdate", self.path, e)
            return {}
        if not isinstance(kinds, dict):
            return {}
        return {kind: entry for kind, entry in kinds.items()
                if kind in KIND_SPECS and isinstance(entry, dict) and isinstance(entry.get("startdate", ""), str)
                and (type(entry.get("id")) is int and isinstance(entry.get("imported_at", ""), str)
                     or isinstance(entry.get("since"), str) and STARTDATE_PATTERN.fullmatch(entry["since"]))}

    def valid(self, kind: str) -> bool:
        entry = self.kinds.get(kind)
        return bool(entry) and self.config.startdate in (entry.get("startdate"), entry.get("previous"))

    def start(self, store: Store, spec: KindSpec) -> tuple:
        """(after_id, how it was chosen) for one kind."""
        kind = spec.name
        self.ran.add(kind)
        since = self.override or self.config.startdate
        if not self.override and self.valid(kind) and "since" in self.kinds[kind]:
            since = self.kinds[kind]["since"]     # held where Startdate stood when others moved on
        elif not self.override and self.valid(kind):
            after = int(self.kinds[kind]["id"])
            sent_at = self.kinds[kind].get("imported_at")
            reused = store.first_id_reused(spec, after, sent_at) if sent_at else None
            if reused is not None:
                say(f"{kind}: the store gave ids from {reused} again to newer records (old ones purged); "
                    f"sending from id {reused}")
                return reused - 1, f"after id {reused - 1}"
            if after <= store.max_id(spec):
                return after, f"after id {after}"
            say(f"{kind}: the store ends before id {after}, the last one sent (was it replaced?); "
                f"sending from Startdate {since or '(empty: all)'}")
        if not since:
            return store.min_id(spec) - 1, "from the oldest record"
        first = store.first_id_since(spec, local_to_utc_text(since))
        after = store.max_id(spec) if first is None else first - 1
        return after, f"imported since {since}"

    def reached(self, store: Store, spec: KindSpec, after: int) -> None:
        """A kind read to its end without delivering anything: it resumes from where it stood,
        by id, whatever Startdate becomes."""
        if spec.name in self.advanced:
            return
        entry = self.kinds.get(spec.name)
        if entry and self.valid(spec.name) and not self.override and entry.get("id") == after:
            return
        self.kinds[spec.name] = {"id": after, "imported_at": store.imported_at(spec, after) or "",
                                 "startdate": self.config.startdate}
        self.save()

    def advance(self, record: Record) -> None:
        """Save that everything up to this record was delivered (atomic; at least every batch)."""
        self.kinds[record.kind] = {"id": record.id, "imported_at": record.imported_at,
                                   "startdate": self.config.startdate}
        self.advanced.add(record.kind)
        self.save()

    def save(self) -> None:
        data = json.dumps({"version": 1, "kinds": self.kinds}, indent=1, sort_keys=True).encode()
        try:
            write_atomically(self.path, data)
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot save the resume point ({e.strerror}); "
                              f"check that this account may write beside config.ini") from None

    def finish(self) -> Optional[str]:
        """Move Startdate to the oldest resume point of the kinds sent; the new value or None.
        A kind without a resume point of its own (not sent yet, failed before its first
        delivery, or to be sent again after a hand edit) is first held where Startdate stands."""
        old = self.config.startdate
        for kind in KINDS:
            if not (kind in self.kinds and (kind in self.ran or self.valid(kind))):
                self.kinds[kind] = {"since": old, "startdate": old}
        times = [utc_to_local_text(entry.get("imported_at") or "") for entry in self.kinds.values()]
        new = min((t for t in times if t), default="")
        if not new or (old and new <= old):   # never backwards: it is what people read
            return None
        for entry in self.kinds.values():
            entry.update(startdate=new, previous=old)
        self.save()             # first: a crash before config.ini is written leaves both valid
        rewrite_startdate(self.config, new)
        for entry in self.kinds.values():   # now a hand edit back to the old value means "send again"
            entry.pop("previous", None)
        self.save()
        return new


@contextlib.contextmanager
def run_lock(config: Config):
    """One send per config.ini at a time. The OS drops the lock when a process dies, so a
    killed run never blocks the next one."""
    path = os.path.splitext(config.path)[0] + ".lock"
    f = open(path, "a+")
    try:
        try:
            lock_file(f)
        except OSError:
            raise BusyError(f"another siem_tool run is sending with {config.path}; this run sent nothing "
                            f"(the next scheduled run picks up its records)") from None
        yield
    finally:
        f.close()


def lock_file(f) -> None:
    if os.name == "nt":
        import msvcrt
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# --- send --------------------------------------------------------------------

@dataclasses.dataclass
class KindReport:
    kind: str
    how: str = ""
    delivery: Delivery = dataclasses.field(default_factory=Delivery)
    seconds: float = 0.0
    last: Optional[Record] = None
    copy_path: Optional[str] = None
    failed: bool = False

    def line(self) -> str:
        d = self.delivery
        parts = [f"{self.kind}: {d.delivered} records sent", f"{d.bytes} bytes", f"{self.seconds:.1f} s"]
        if self.last:
            parts.append(f"checkpoint id {self.last.id} (imported {utc_to_local_text(self.last.imported_at)})")
        else:
            parts.append(f"checkpoint not moved ({self.how})")
        if d.truncated:
            parts.append(f"{d.truncated} cut to MaxMessageSize")
        if d.quarantined:
            parts.append(f"{d.quarantined} quarantined")
        line = ", ".join(parts)
        return line + (f" -> {self.copy_path}" if self.copy_path else "")


class LocalCopy:
    """The LEEF lines a run delivered, one file per kind, created with the first delivery."""

    def __init__(self, folder: str, stamp: str):
        self.folder, self.stamp, self.files = folder, stamp, {}
        try:   # a folder that cannot take the copy is found before anything is sent
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise ConfigError(f"{folder}: the local copy of what is sent cannot be written there "
                              f"({e.strerror}); choose another folder with --output") from None

    def write(self, kind: str, batch: Sequence[Record]) -> str:
        path = self.files[kind][0] if kind in self.files else new_file_name(self.folder, kind, self.stamp, "leef")
        try:
            if kind not in self.files:
                self.files[kind] = (path, open(path, "a", encoding="utf-8", newline=""))
            f = self.files[kind][1]
            f.write("".join(record.line + "\n" for record in batch))
            f.flush()
        except OSError as e:
            raise ConfigError(f"{path}: the local copy cannot be written ({e.strerror}); the records were "
                              f"delivered and the checkpoint moved past them; free some disk space") from None
        return path

    def close(self) -> None:
        for _path, f in self.files.values():
            f.close()


def batches(items: Iterable[Record], records: int = RECORDS_PER_BATCH,
            size: int = BYTES_PER_BATCH) -> Iterator[list]:
    """Groups of at most `records` items and about `size` bytes: the unit the checkpoint moves by."""
    batch, total = [], 0
    for item in items:
        batch.append(item)
        total += len(item.line)
        if len(batch) >= records or total >= size:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def send_kind(store: Store, spec: KindSpec, config: Config, style: LeefStyle, sender: Sender,
              checkpoint: Checkpoint, copy: LocalCopy) -> KindReport:
    report = KindReport(spec.name)
    started = time.monotonic()
    after, report.how = checkpoint.start(store, spec)
    log.debug("%s: sending %s", spec.name, report.how)
    records = KindReader(store, spec, config.severity, style).records(after_id=after)
    records = with_progress(records, lambda: store.count(spec, after_id=after), spec.name)
    try:
        for batch in batches(records):
            try:
                delivery = sender.send(spec.name, batch)
            except SiemError as e:
                delivered = batch[:e.delivered]
                if delivered:
                    record_delivery(report, checkpoint, copy, delivered, Delivery(len(delivered)))
                report.failed = True
                e.report = report
                raise
            record_delivery(report, checkpoint, copy, batch, delivery)
        checkpoint.reached(store, spec, after)
    finally:
        report.seconds = time.monotonic() - started
    return report


def record_delivery(report: KindReport, checkpoint: Checkpoint, copy: LocalCopy,
                    batch: Sequence[Record], delivery: Delivery) -> None:
    checkpoint.advance(batch[-1])     # first: the SIEM has them, whatever happens to the copy
    report.copy_path = copy.write(report.kind, batch)
    report.delivery.add(delivery)
    report.last = batch[-1]


def run_send(options: Options, config: Config) -> int:
    settings = config.siem_settings(options.siem)
    log.debug("SIEM settings: %s", settings)
    if options.dry_run:
        return run_dry_send(options, config, settings)
    folder = output_folder(options, config, "sent")
    style = LeefStyle.from_config(config)
    reports, failure = [], None
    with run_lock(config), Store(config.store_path) as store:
        store.check_schema(options.kinds)
        checkpoint = Checkpoint(config, options.startdate)
        copy = LocalCopy(folder, file_stamp())
        try:
            with SENDERS[options.siem](settings, config) as sender:
                for kind in options.kinds:
                    report = KindReport(kind)
                    try:
                        report = send_kind(store, KIND_SPECS[kind], config, style, sender, checkpoint, copy)
                    except SiemError as e:
                        failure = failure or e
                        report = getattr(e, "report", report)
                        if not e.kind_only:
                            break
                    finally:
                        reports.append(report)
        finally:
            copy.close()
            new_startdate = checkpoint.finish()
    for report in reports:
        say(report.line())
    if new_startdate:
        log.debug("Startdate in %s is now %s", config.path, new_startdate)
    return send_outcome(reports, failure, sender)


def send_outcome(reports: Sequence[KindReport], failure: Optional[SiemError], sender: Sender) -> int:
    if failure:
        moved = [f"{r.kind} to id {r.last.id}" for r in reports if r.last]
        status = f"checkpoint moved: {', '.join(moved)}" if moved else "checkpoint not moved"
        raise SiemError(f"{failure}. {status}; the next run sends the rest")
    quarantined = sum(r.delivery.quarantined for r in reports)
    if quarantined:
        print(f"siem_tool: {quarantined} records were refused by HEC and quarantined in "
              f"{getattr(sender, 'quarantine_path', '')}; the others were delivered", file=sys.stderr)
        return EXIT_QUARANTINE
    return EXIT_OK


# --- check and dry run -------------------------------------------------------

def visible(data: bytes) -> str:
    """Message bytes for a person: control characters as escapes, Japanese text as it is."""
    text = data.decode("utf-8", "replace")
    named = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
    return "".join(named.get(c, f"\\x{ord(c):02x}") if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c
                   for c in text)


def local_address_towards(address: str, port: int) -> str:
    """The IP this PC would use to reach the server; a UDP connect sends no packet."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address, port))
        return probe.getsockname()[0]
    return "127.0.0.1"


def preview_message(sender: Sender, kind: str, record: Record) -> tuple:
    """The bytes a real send would put on the wire for one record, and whether it would be cut."""
    if isinstance(sender, HecSender):
        return sender.envelope(kind, record), False
    settings = sender.settings
    messages, cut = sender.messages(kind, [record], local_address_towards(settings.address, settings.port))
    return frame(messages[0], settings.framing if settings.protocol != "UDP" else "none"), bool(cut)


def run_dry_send(options: Options, config: Config, settings) -> int:
    style = LeefStyle.from_config(config)
    sender = SENDERS[options.siem](settings, config)
    limit = getattr(settings, "max_message", None)
    with Store(config.store_path) as store:
        store.check_schema(options.kinds)
        checkpoint = Checkpoint(config, options.startdate)   # read, never saved
        for kind in options.kinds:
            spec = KIND_SPECS[kind]
            after, how = checkpoint.start(store, spec)
            count = cut = 0
            for record in KindReader(store, spec, config.severity, style).records(after_id=after):
                message, was_cut = preview_message(sender, kind, record)
                if count < 3:
                    say(f"  {kind} #{count + 1}: {visible(message)}")
                if was_cut:
                    say(f"  warning: {kind} id {record.id} is longer than MaxMessageSize ({limit} bytes) "
                        f"and would be cut")
                count += 1
                cut += was_cut
            say(f"{kind}: {count} records would be sent ({how}), {cut} would be cut; dry run: nothing sent")
    return EXIT_OK


def certificate_lines(der: bytes) -> list:
    """Subject, names, issuer, validity and SHA-256 of a server certificate, for people."""
    fingerprint = hashlib.sha256(der).hexdigest().upper()
    lines = []
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "cert.pem")
            with open(path, "w", encoding="ascii") as f:
                f.write(ssl.DER_cert_to_PEM_cert(der))
            with contextlib.suppress(Exception):
                info = decode(path)
                name = lambda field: ", ".join(f"{k}={v}" for rdn in info.get(field, ()) for k, v in rdn)
                lines += [f"subject:   {name('subject')}",
                          f"names:     {', '.join(v for _k, v in info.get('subjectAltName', ())) or '(none)'}",
                          f"issuer:    {name('issuer')}",
                          f"valid:     {info.get('notBefore')} to {info.get('notAfter')}"]
    lines.append("SHA-256:   " + ":".join(fingerprint[i:i + 2] for i in range(0, 64, 2)))
    return lines


def fetch_certificate(address: str, port: int, timeout: float) -> Optional[bytes]:
    """The server's certificate WITHOUT verification, only to show it to the admin."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=address) as tls:
            return tls.getpeercert(binary_form=True)
    return None


def check_tls(label: str, tls: TlsClient, address: str, port: int, timeout: float) -> list:
    """Handshake as a send would; show the certificate, and why it is refused if it is."""
    reached = []

    def dial() -> socket.socket:
        try:
            sock = socket.create_connection((address, port), timeout=timeout)
        except OSError as e:
            raise SiemError(f"{label}: {describe_os_error(e)}") from None
        reached.append(True)
        return sock
    try:
        connection = tls.connect(dial, timeout)
    except SiemError as e:
        der = fetch_certificate(address, port, timeout) if reached else None
        shown = certificate_lines(der) if der else ["certificate: none (no TLS answer)"] if reached else []
        return shown + [f"verification FAILED: {str(e)[len(label) + 2:]}"]
    with connection:
        shown = [f"TLS:       {connection.version()}, {connection.cipher()[0]}"]
        shown += certificate_lines(connection.getpeercert(binary_form=True))
    how = "exactly the certificate in CertFile" if tls.pinned else f"issued for {tls.server_name or address}"
    return shown + [f"verification: OK ({how})"]


def check_syslog(settings: SyslogSettings) -> tuple:
    """(problem or None, lines) for QRadar or rsyslog."""
    s = settings
    try:
        socket.getaddrinfo(s.address, s.port)
    except OSError as e:
        return f"{s.label}: {describe_os_error(e)}", []
    if s.protocol == "UDP":
        return None, [f"UDP:       {s.address} resolves; UDP cannot confirm delivery: look for the messages "
                      f"on the server"]
    if s.protocol == "TCP":
        try:
            socket.create_connection((s.address, s.port), timeout=s.timeout).close()
        except OSError as e:
            return f"{s.label}: {describe_os_error(e)}", []
        return None, ["TCP:       connected"]
    tls = TlsClient(s.cert_file, s.server_name, s.address, s.label)
    lines = check_tls(s.label, tls, s.address, s.port, s.timeout)
    failed = lines[-1].startswith("verification FAILED")
    return (f"{s.label}: {lines[-1][len('verification FAILED: '):]}" if failed else None), lines


def check_splunk(settings: SplunkSettings, config: Config) -> tuple:
    """Health, then the token, without indexing anything: an empty POST answers code 5 for a
    good token and 4 for a bad one."""
    import requests
    sender = HecSender(settings, config.facility, os.path.join(config.folder, "quarantine"))
    lines = check_tls(settings.label, sender.tls, settings.address, settings.port, settings.timeout)
    if lines[-1].startswith("verification FAILED"):
        return f"{settings.label}: {lines[-1][len('verification FAILED: '):]}", lines
    with sender:
        try:
            health = sender.session.get(sender.base_url + "/health", timeout=settings.timeout,
                                        verify=sender.tls.cert_file or True)
            lines.append(f"health:    HTTP {health.status_code} {hec_answer(health, settings.token).get('text', '')}")
            answer, _retry = sender.try_post("/event", b"", "")
        except requests.exceptions.RequestException as e:
            return f"{settings.label}: cannot reach HEC ({describe_requests_error(e, settings.timeout)})", lines
        except SiemError as e:
            return str(e), lines
    if isinstance(answer, dict) and answer.get("code") == 5:
        return None, lines + ["token:     accepted"]
    problem = explain_hec_code(answer) if isinstance(answer, dict) else answer
    return f"{settings.label}: {problem}", lines + ["token:     REFUSED"]


def run_check(options: Options, config: Config) -> int:
    settings = config.siem_settings(options.siem)
    say(f"config:    {config.path}")
    say(f"log store: {config.store_path}")
    problems = []
    try:
        with Store(config.store_path) as store:
            store.check_schema(options.kinds)
            checkpoint = Checkpoint(config, None)
            for kind in options.kinds:
                spec = KIND_SPECS[kind]
                after, how = checkpoint.start(store, spec)
                waiting = store.query(f"SELECT count(*) FROM {spec.table} WHERE id > ?", [after])[0][0]
                say(f"waiting:   {kind}: {waiting} records ({how})")
    except StoreError as e:
        say(f"log store: FAILED: {e}")
        problems.append(e)
    say(f"SIEM:      {settings.label}")
    problem, lines = check_splunk(settings, config) if options.siem == "splunk" else check_syslog(settings)
    for line in lines:
        say(f"  {line}")
    if problem:
        problems.append(SiemError(problem))
    if problems:
        raise problems[0] if len(problems) == 1 else type(problems[0])(
            f"{problems[0]} (and: {'; '.join(map(str, problems[1:]))})")
    udp = isinstance(settings, SyslogSettings) and settings.protocol == "UDP"
    say("result:    all checks passed" + (" that UDP allows (it cannot tell whether a server listens)" if udp else ""))
    return EXIT_OK


# --- main --------------------------------------------------------------------

COMMANDS = {"export": run_export, "send": run_send, "check": run_check}


def start_debug_log(options: Options, argv: Sequence[str]) -> None:
    if not options.debug:
        log.addHandler(logging.NullHandler())
        return
    path = os.path.join(os.path.dirname(options.config_path), DEBUG_LOG_NAME)
    with contextlib.suppress(OSError):
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
    log.debug("siem_tool %s, Python %s, arguments %s", __version__, sys.version.split()[0], list(argv))
    log.debug("config %s", options.config_path)


def make_console_safe() -> None:
    """A console that cannot show a character (cp932 and a host name in Hangul) must not end the run."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    make_console_safe()
    debug = any(a in ("-d", "--debug") for a in argv)
    try:
        options = parse_command_line(argv)
        start_debug_log(options, argv)
        config = load_config(options.config_path)
        log.debug("store %s; config (secrets hidden) %s", config.store_path, masked_config(config))
        return COMMANDS[options.command](options, config)
    except SystemExit as e:       # -h and -v
        return e.code if isinstance(e.code, int) else EXIT_OK
    except SiemToolError as e:
        log.debug("error", exc_info=True)
        print(f"siem_tool: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("siem_tool: interrupted; what was delivered is recorded, the next run sends the rest",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        log.exception("unexpected error")
        if debug:
            import traceback
            traceback.print_exc()
        print(f"siem_tool: internal error ({type(e).__name__}: {e}); this is a bug: please report it "
              f"with the output of the same command run with -d", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
