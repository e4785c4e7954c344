"""tests.runtimes.nslookup on busybox 1.35's output forms: an answer, NXDOMAIN, other
failures and no server. Owns: the parser only (no container, no network)."""

from __future__ import annotations

from tests.runtimes.nslookup import parse

HEAD = "Server:\t\t10.63.0.1\nAddress:\t10.63.0.1:53\n\n"


def test_an_answer_gives_its_address_and_is_not_nxdomain() -> None:
    got = parse(HEAD + "Name:\tweb-b\nAddress: 10.63.0.3\n\n** server can't find web-b: NXDOMAIN\n\n")
    assert got.address == "10.63.0.3" and not got.nxdomain  # an AAAA miss does not hide the A answer


def test_only_nxdomain_for_every_query_is_a_gone_name() -> None:
    assert parse(HEAD + "** server can't find web-b.blue: NXDOMAIN\n\n" * 2).nxdomain
    assert not parse(HEAD + "** server can't find web-b: SERVFAIL\n\n** server can't find web-b: NXDOMAIN\n\n").nxdomain
    assert not parse(HEAD + "** server can't find web-b: REFUSED\n\n" * 2).nxdomain
    assert not parse(";; connection timed out; no servers could be reached\n\n").nxdomain
    assert not parse("").nxdomain
