"""Shared fixtures: real stores built by make_store.py, real config files, the CLI run as a user runs it."""
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIEM_TOOL_SHARED", ROOT.parent / "shared"))
MAKE_STORE = SHARED / "store" / "make_store.py"
GOLDEN = SHARED / "golden"
TOOL = ROOT / "siem_tool.py"

sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.peers.fixtures"] if (ROOT / "tests" / "peers" / "fixtures.py").exists() else []



def pytest_configure(config):
    if not MAKE_STORE.exists() or not GOLDEN.is_dir():
        raise pytest.UsageError(f"the tests build stores with {MAKE_STORE} and compare with {GOLDEN}: "
                                f"put the project's shared/ folder beside this checkout or set SIEM_TOOL_SHARED")


TABLES = ("scan_log", "detection_log", "asset_info", "application_info", "update_info")


def make_store(path, *args):
    """Build a store with the project's shared generator; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(MAKE_STORE), str(path), *map(str, args)], check=True,
                   capture_output=True)
    return path


_STORE_CACHE = {}


@pytest.fixture(scope="session")
def store_cache(tmp_path_factory):
    """Stores are slow-ish to build; build each argument set once per session, copy per test."""
    base = tmp_path_factory.mktemp("stores")

    def get(*args):
        key = tuple(map(str, args))
        if key not in _STORE_CACHE:
            _STORE_CACHE[key] = make_store(base / f"store{len(_STORE_CACHE)}.db", *args)
        return _STORE_CACHE[key]
    return get


def write_config(folder, general=None, sections=None, installed="Management Program",
                 encoding="utf-8", bom=True, newline="\r\n"):
    """A config.ini as an admin's Notepad leaves it: BOM, CRLF, comments."""
    folder = Path(folder)
    lines = ["; test config", "[General Setting]", "Startdate =", f"InstalledFolder = {installed}"]
    lines += [f"{k} = {v}" for k, v in (general or {}).items()]
    for name, values in (sections or {}).items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {v}" for k, v in values.items()]
    data = newline.join(lines + [""]).encode(encoding)
    if bom and encoding == "utf-8":
        data = b"\xef\xbb\xbf" + data
    path = folder / "config.ini"
    path.write_bytes(data)
    return path


class Site:
    """A folder like an admin's: config.ini, the Management Program's store below it."""

    def __init__(self, folder, store_source):
        self.folder = Path(folder)
        self.store = self.folder / "Management Program" / "Data" / "tmps3log.db"
        self.store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store_source, self.store)
        self.config = write_config(self.folder)

    def configure(self, **kwargs):
        self.config = write_config(self.folder, **kwargs)
        return self.config

    def run(self, *args, env=None, cwd=None, timeout=600):
        return run_tool(*args, "--config", str(self.config), env=env, cwd=cwd, timeout=timeout)

    def sql(self, query, params=()):
        db = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True)
        try:
            return db.execute(query, params).fetchall()
        finally:
            db.close()

    def store_hash(self):
        return hashlib.sha256(self.store.read_bytes()).hexdigest()


def run_tool(*args, env=None, cwd=None, timeout=600):
    """The program as a user types it: a subprocess, exit code and both streams."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONIOENCODING", "utf-8")
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", env=full_env, cwd=cwd or ROOT, timeout=timeout)


@pytest.fixture
def site(tmp_path, store_cache):
    """A site with a default store (the guide's five records first)."""
    return Site(tmp_path / "site", store_cache("--scans", 300, "--hosts", 30))


@pytest.fixture
def edge_site(tmp_path, store_cache):
    """A site whose store has the --edge values: Japanese, | = \\ quotes, NULLs, formulas, long paths."""
    return Site(tmp_path / "site", store_cache("--scans", 400, "--hosts", 25, "--edge"))


def output_files(folder, pattern="*"):
    return sorted(Path(folder).glob(pattern))
