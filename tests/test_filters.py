"""Every export filter on every kind, its count checked against an SQL count written here."""
import ipaddress

import pytest

from test_export import summary

# Where each kind takes its endpoint time, IP and host name from (SPEC section 3).
SOURCES = {
    "scannedlog": ("scan_log t", "t.start_time", "t.host_ip", "t.host_name"),
    "detectedlog": ("detection_log t LEFT JOIN scan_log s ON s.log_id = t.log_id",
                    "s.start_time", "s.host_ip", "s.host_name"),
    "assetinfo": ("asset_info t", "t.collected_at", "t.ip", "t.host_name"),
    "applicationinfo": ("application_info t LEFT JOIN asset_info a ON a.id = t.asset_id",
                        "a.collected_at", "a.ip", "a.host_name"),
    "updateinfo": ("update_info t LEFT JOIN asset_info a ON a.id = t.asset_id",
                   "a.collected_at", "a.ip", "a.host_name"),
}
KIND_OPTIONS = {
    "scannedlog": ["--log=scannedlog"], "detectedlog": ["--log=detectedlog"],
    "assetinfo": ["--log=assetinfo", "--assetinfo=assetinfo"],
    "applicationinfo": ["--log=assetinfo", "--assetinfo=applicationinfo"],
    "updateinfo": ["--log=assetinfo", "--assetinfo=updateinfo"],
}


def rows_of(site, kind):
    source, when, ip, host = SOURCES[kind]
    return site.sql(f"SELECT {when}, {ip}, {host} FROM {source}")


def count_of(site, kind, args):
    result = site.run("export", *KIND_OPTIONS[kind], "--format=leef", *args)
    assert result.returncode == 0, result.stderr
    count, path = summary(result)[kind]
    assert path.read_text("utf-8").count("\n") == count
    return count


def expected(site, kind, keep):
    return sum(1 for when, ip, host in rows_of(site, kind) if keep(when, ip, host))


def day(text):
    """ddMMyyyy of a store time."""
    return f"{text[8:10]}{text[5:7]}{text[0:4]}"


@pytest.mark.parametrize("kind", list(SOURCES))
def test_date_filter_both_days_inclusive(edge_site, kind):
    times = sorted(w for w, _ip, _host in rows_of(edge_site, "scannedlog") if w)
    first, last = times[len(times) // 3], times[2 * len(times) // 3]
    lo, hi = first[:10], last[:10]
    want = expected(edge_site, kind, lambda w, ip, h: w is not None and lo <= w[:10] <= hi)
    assert want > 0
    assert count_of(edge_site, kind, ["--date", day(first), day(last)]) == want


@pytest.mark.parametrize("kind", list(SOURCES))
def test_single_day(edge_site, kind):
    when = next(w for w, _ip, _h in rows_of(edge_site, kind) if w)
    want = expected(edge_site, kind, lambda w, ip, h: w is not None and w[:10] == when[:10])
    assert count_of(edge_site, kind, ["--date", day(when), day(when)]) == want >= 1


@pytest.mark.parametrize("kind", list(SOURCES))
def test_ip_filter(edge_site, kind):
    ip = next(ip for _w, ip, _h in rows_of(edge_site, kind) if ip)
    want = expected(edge_site, kind, lambda w, i, h: i == ip)
    assert count_of(edge_site, kind, [f"--ip={ip}"]) == want >= 1


@pytest.mark.parametrize("kind", list(SOURCES))
def test_netmask_filter(edge_site, kind):
    net = ipaddress.IPv4Network("10.1.0.0/16")
    want = expected(edge_site, kind, lambda w, i, h: bool(i) and ipaddress.IPv4Address(i) in net)
    assert want > 0
    assert count_of(edge_site, kind, ["--netmask=10.1.0.0/16"]) == want


def test_netmask_with_host_bits_means_its_network(edge_site):
    assert count_of(edge_site, "scannedlog", ["--netmask=10.1.77.5/16"]) == \
        count_of(edge_site, "scannedlog", ["--netmask=10.1.0.0/16"])


@pytest.mark.parametrize("kind", list(SOURCES))
def test_hostname_filter_is_case_insensitive(edge_site, kind):
    host = next(h for _w, _i, h in rows_of(edge_site, kind) if h and h.startswith("WS-"))
    want = expected(edge_site, kind, lambda w, i, h: h is not None and h.lower() == host.lower())
    assert count_of(edge_site, kind, [f"--hostname={host.lower()}"]) == want >= 1


def test_japanese_hostname_filter(edge_site):
    want = expected(edge_site, "scannedlog", lambda w, i, h: h == "製造ライン-PC01")
    assert count_of(edge_site, "scannedlog", ["--hostname=製造ライン-PC01"]) == want >= 1


@pytest.mark.parametrize("kind", list(SOURCES))
def test_filters_combine(edge_site, kind):
    times = sorted(w for w, _ip, _host in rows_of(edge_site, "scannedlog") if w)
    lo, hi = times[0][:10], times[len(times) // 2][:10]
    net = ipaddress.IPv4Network("10.0.0.0/15")
    want = expected(edge_site, kind, lambda w, i, h: w is not None and lo <= w[:10] <= hi and bool(i)
                    and ipaddress.IPv4Address(i) in net)
    got = count_of(edge_site, kind, ["--date", day(times[0]), day(times[len(times) // 2]), "--netmask=10.0.0.0/15"])
    assert got == want
