"""The allowlist's patterns and the proxy's address rules, as plain functions: what a
policy may write, what a tool may ask for, and which answers are never connected to."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from policies import parse_policy
from sandbox.egress.addresses import never, refused
from sandbox.egress.allowlist import NotAllowed, allowed, destination, parse_pattern
from sandbox.errors import PolicyError

LIST = tuple(
    parse_pattern(p)
    for p in ("API.Weather.test.:443", "*.weather.test:8443", "203.0.113.7:*", "[2001:db8::1]:80")
)


@pytest.mark.parametrize(
    ("host", "port", "admitted"),
    [
        ("api.weather.test", 443, True),
        ("API.WEATHER.TEST.", 443, True),
        ("api.weather.test", 444, False),
        ("eu.weather.test", 8443, True),
        ("a.b.weather.test", 8443, True),
        ("weather.test", 8443, False),  # *.name is below the name, never the name itself
        ("evilweather.test", 8443, False),
        ("weather.test.evil", 8443, False),
        ("203.0.113.7", 1, True),
        ("203.0.113.8", 1, False),
        ("[2001:db8:0::1]", 80, True),
        ("[2001:db8::2]", 80, False),
    ],
)
def test_what_a_list_admits(host: str, port: int, admitted: bool) -> None:
    assert allowed(LIST, destination(host, port)) is admitted


def test_names_and_addresses_never_stand_for_each_other() -> None:
    by_name = (parse_pattern("localhost:80"),)
    assert not allowed(by_name, destination("127.0.0.1", 80))
    by_address = (parse_pattern("127.0.0.1:80"),)
    assert not allowed(by_address, destination("localhost", 80))


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",  # inet_aton would read these as 127.0.0.1
        "127.1",
        "0x7f.0.0.1",
        "a@b.test",
        "exa mple.test",
        "xn--bcher-kva.test\u00fc",
        "",
        "a..b",
        "-a.test",
        "[127.0.0.1]",
        "[fe80::1%eth0]",
    ],
)
def test_what_is_not_a_host_is_refused_before_any_lookup(host: str) -> None:
    with pytest.raises(NotAllowed):
        destination(host, 80)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("api.weather.test", "has no port"),
        ("api.weather.test:0", "is not a port"),
        ("api.weather.test:70000", "is not a port"),
        ("*:443", r"first label, \*\.name"),
        ("api.*.test:443", "only accepted as the first label"),
        ("2001:db8::1:443", "in brackets"),
        ("bücher.test:443", "xn--"),
    ],
)
def test_a_bad_entry_says_what_is_accepted(entry: str, says: str) -> None:
    with pytest.raises(NotAllowed, match=says):
        parse_pattern(entry)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "not a global address"),  # carrier-grade NAT, often the LAN
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd12::1", "private"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_answers_in_private_ranges_are_refused(address: str, why: str) -> None:
    assert why in (refused(ipaddress.ip_address(address), allow_private=False) or "")


def test_allow_private_opens_the_lan_but_never_metadata_or_the_unspecified() -> None:
    ip = ipaddress.ip_address
    assert refused(ip("10.0.0.1"), allow_private=True) is None
    assert refused(ip("127.0.0.1"), allow_private=True) is None
    assert "metadata" in (refused(ip("169.254.169.254"), allow_private=True) or "")
    assert refused(ip("93.184.215.14"), allow_private=False) is None
    # What the policy writes itself is trusted as written, but for these.
    assert never(ip("10.0.0.1")) is None
    assert never(ip("0.0.0.0")) and never(ip("::")) and never(ip("::ffff:0.0.0.0"))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            '[tools.calculate]\nnetwork = ["api.test"]\n',
            "network: 'api.test' has no port: write host:port",
        ),
        ('[tools.calculate]\nnetwork = "api.test:443"\n', 'a list of "host:port" strings'),
        ("[tools.calculate]\nnetwork = []\n", "write network = false"),
        ('[egress]\nresolve = { "api.test" = "1.2.3" }\n', "is not an IPv4 or IPv6 address"),
        ('[egress]\nresolve = { "1.2.3.4" = "1.2.3.4" }\n', "ends in a number"),
        ("[egress]\nallow_private = 1\n", "[egress] allow_private"),
    ],
)
def test_a_bad_policy_names_its_table_and_key(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(PolicyError, match=r"^p\.toml: ") as caught:
        parse_policy(text, "p.toml", tmp_path)
    assert says in str(caught.value)
