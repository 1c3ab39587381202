"""MAC parsing, formatting and unicast arithmetic."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.domain.mac import (
    MAC_MAX,
    MacFormatError,
    format_mac,
    is_multicast,
    parse_mac,
    unicast_at,
    unicast_below,
    unicast_problem,
)
from ipam.domain.pools import RangeError, parse_range

macs = st.integers(0, MAC_MAX)


@given(macs)
def test_every_form_parses_to_the_same_integer(value):
    colon = format_mac(value)
    h = colon.replace(":", "")
    assert parse_mac(colon) == value
    assert parse_mac(colon.upper()) == value
    assert parse_mac(colon.replace(":", "-")) == value
    assert parse_mac(f"{h[0:4]}.{h[4:8]}.{h[8:12]}") == value
    assert format_mac(parse_mac(colon.upper())) == colon


@pytest.mark.parametrize("text", ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "02:00-00:00:00:00", "0g:00:00:00:00:00",
                                  "020000000000", " 02:00:00:00:00:00", "02.0000.0000", "2:0:0:0:0:0"])
def test_malformed_macs_are_rejected(text):
    with pytest.raises(MacFormatError):
        parse_mac(text)


def test_unicast_rules():
    assert unicast_problem(0) and "all-zero" in unicast_problem(0)
    assert "broadcast" in unicast_problem(MAC_MAX)
    assert "multicast" in unicast_problem(parse_mac("01:00:5e:00:00:01"))
    assert unicast_problem(parse_mac("02:00:00:00:00:01")) is None


@given(st.integers(0, (1 << 47) - 1))
def test_unicast_ordinals_round_trip_and_are_unicast(ordinal):
    mac = unicast_at(ordinal)
    assert not is_multicast(mac)
    assert unicast_below(mac) == ordinal


@given(macs, macs)
def test_range_size_counts_exactly_the_unicast_addresses(a, b):
    first, last = min(a, b), max(a, b)
    if last - first > 5000:
        last = first + 5000
    expected = sum(1 for m in range(first, last + 1) if not is_multicast(m))
    assert unicast_below(last + 1) - unicast_below(first) == expected


def test_kubemacpool_default_range_has_2_to_the_40_addresses():
    r = parse_range("02:00:00:00:00:00-02:ff:ff:ff:ff:ff")
    assert r.size == 1 << 40
    assert str(r) == "02:00:00:00:00:00-02:ff:ff:ff:ff:ff"
    assert parse_range("02-00-00-00-00-00-02-00-00-00-00-ff").size == 256


@pytest.mark.parametrize("text,why", [("02:00:00:00:00:ff-02:00:00:00:00:00", "after its end"),
                                      ("00:00:00:00:00:00-00:00:00:00:00:ff", "all-zero"),
                                      ("01:00:00:00:00:00-01:00:00:00:00:ff", "only multicast"),
                                      ("02:00:00:00:00:00", "not a range")])
def test_bad_ranges_say_why(text, why):
    with pytest.raises(RangeError, match=why):
        parse_range(text)
