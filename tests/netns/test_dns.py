"""Names across hosts with real agents (issue 13 items 3 and 5): the DNS responder on the gateway.

Two agent hosts on the lab underlay; a "container" namespace on each. Queries are made the
way a container would, with busybox's ``nslookup NAME GATEWAY`` (Debian's busybox-static),
independently of the agent's code; hostile traffic is sent from a container with plain
sockets. Forwarding is checked against an upstream server of our own in a third namespace,
named in a resolv.conf bound over /etc/resolv.conf in the agent's own mount namespace.
Every wait has a deadline; nothing asserts timing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.lab.agentnode import agent_argv
from agent.lab.netlab import Lab
from tests.netns.overlaylab import OverlayLab, wait_for

pytestmark = pytest.mark.netns
LabFactory = Callable[..., Lab]
SUBNET, GATEWAY = "10.53.0.0/24", "10.53.0.1"
SUBNET6, GATEWAY6 = "fd00:53::/64", "fd00:53::1"
IPV6_ON = ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0"]
BUSYBOX = "/bin/busybox"


def _lab(lab_factory: LabFactory) -> tuple[Lab, OverlayLab]:
    lab = lab_factory(2)
    for h in lab.hosts:  # the lab turns IPv6 off; the dual-stack network needs it
        lab.run(h, IPV6_ON)
    ol = OverlayLab(lab)
    ol.start_all()
    return lab, ol


def nslookup(ol: OverlayLab, netns: str, name: str, server: str = GATEWAY, qtype: str = "a"
             ) -> tuple[str, list[str]]:
    """(outcome, answers) of busybox nslookup: outcome "ok", or the error it names
    (NXDOMAIN, REFUSED, ...); answers: the addresses (or, for PTR, the names) after the
    server's own lines. Without ``-type`` busybox asks A and AAAA for a name (one type at a
    time here) and PTR for an address (``qtype=""``)."""
    argv = [BUSYBOX, "nslookup", *([f"-type={qtype}"] if qtype else []), name, server]
    r = ol.in_container(netns, argv, timeout=30)
    text = r.stdout + r.stderr
    m = re.search(r"can't find \S+: (\w+)", text)
    if m:
        return m.group(1), []
    body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    answers = re.findall(r"Address: ([0-9a-fA-F:.]+)", body) + re.findall(r"name = (\S+)", body)
    return ("ok" if r.returncode == 0 and answers else f"rc={r.returncode}"), answers


TCP_QUERY = r"""
import sys
import dns.flags, dns.message, dns.query, dns.rcode
q = dns.message.make_query(sys.argv[2], sys.argv[3])
r = dns.query.tcp(q, sys.argv[1], timeout=10)
print(dns.rcode.to_text(r.rcode()), dns.flags.to_text(r.flags))
for rrset in r.answer:
    for rr in rrset:
        print(rr.to_text())
"""


def query_tcp(ol: OverlayLab, netns: str, name: str, qtype: str, server: str = GATEWAY
              ) -> tuple[str, set[str], list[str]]:
    """(rcode, header flags, answers) of one query over TCP port 53 from a container, made
    with dnspython (busybox nslookup asks over UDP only)."""
    r = ol.in_container(netns, [sys.executable, "-c", TCP_QUERY, server, name, qtype], timeout=30)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines, r.stderr
    rcode, *flags = lines[0].split()
    return rcode, set(flags), sorted(lines[1:])


def test_a_name_on_host0_resolves_on_host1_and_vanishes_after_removal(lab_factory: LabFactory) -> None:
    """Item 3: ``nslookup web`` in a container on host1 for a container on host0, as NAME and
    NAME.NETWORK, A and AAAA, and PTR, over UDP and TCP port 53; NXDOMAIN for an unknown
    name and, once the endpoint is removed on host0, for ``web`` too; a container of
    another network that sends its query to this network's gateway is refused (UDP and
    TCP)."""
    lab, ol = _lab(lab_factory)
    ol.create_network(0, "dn", "--subnet", SUBNET, "--subnet", SUBNET6)
    c0, c1 = ol.container("d0"), ol.container("d1")
    for cn in (c0, c1):
        lab.run(cn, IPV6_ON)
    web = ol.create_endpoint(0, "dn", c0, "--name", "web")
    ol.create_endpoint(1, "dn", c1, "--name", "probe")
    wait_for(lambda: nslookup(ol, c1, "web") == ("ok", [web["ipv4"]]), "web to resolve on host1", within=60)
    assert nslookup(ol, c1, "web.dn") == ("ok", [web["ipv4"]])
    assert nslookup(ol, c1, "web.dn", qtype="aaaa") == ("ok", [web["ipv6"]])
    assert nslookup(ol, c1, "web", server=GATEWAY6, qtype="a") == ("ok", [web["ipv4"]])
    assert nslookup(ol, c1, web["ipv4"], qtype="") == ("ok", ["web.dn"])
    assert nslookup(ol, c1, "nobody")[0] == "NXDOMAIN"
    assert nslookup(ol, c0, "probe.dn")[0] == "ok"  # and the other way round
    # TCP port 53 on both gateway addresses, authoritative answers
    for qname, qtype, server, want in (("web.dn", "A", GATEWAY, web["ipv4"]),
                                       ("web", "AAAA", GATEWAY6, web["ipv6"])):
        rcode, flags, got = query_tcp(ol, c1, qname, qtype, server=server)
        assert (rcode, got) == ("NOERROR", [want]) and {"QR", "AA"} <= flags, (qname, rcode, flags, got)
    assert query_tcp(ol, c1, "nobody.dn", "A")[0] == "NXDOMAIN"
    # A container of another network on host1 asks dn's gateway (routed through the host).
    ol.create_network(0, "other", "--subnet", "10.54.0.0/24")
    c2 = ol.container("d2")
    ol.create_endpoint(1, "other", c2, "--name", "stranger")
    wait_for(lambda: nslookup(ol, c2, "stranger", server="10.54.0.1")[0] == "ok", "the other network's names")
    assert nslookup(ol, c2, "web", server=GATEWAY)[0] == "REFUSED"
    assert query_tcp(ol, c2, "web", "A")[0] == "REFUSED"
    ol.ctl(0, "endpoint", "rm", web["id"])
    wait_for(lambda: nslookup(ol, c1, "web")[0] == "NXDOMAIN", "web to vanish on host1")
    assert nslookup(ol, c1, "web.dn")[0] == "NXDOMAIN"
    assert nslookup(ol, c1, web["ipv4"], qtype="")[0] == "NXDOMAIN"
    assert query_tcp(ol, c1, "web.dn", "A")[0] == "NXDOMAIN"
    status = ol.request(1, "status")
    assert status["dns"]["serving"] == 2 and status["dns"]["nxdomain"] >= 3, status["dns"]


HOSTILE = r"""
import random, socket, struct, sys
gw = sys.argv[1]
rng = random.Random(53)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3000):
    u.sendto(rng.randbytes(rng.randrange(0, 700)), (gw, 53))
u.sendto(b"\x12\x34" + b"\x01\x00\x00\x01" + b"\x00" * 6 + b"\x3f" + b"a" * 20, (gw, 53))  # truncated
held = []
for i in range(40):  # more connections than the responder takes, each idle or hostile
    t = socket.create_connection((gw, 53), timeout=5)
    if i % 2:
        t.sendall(b"\xff\xff" + b"\x00" * 64)  # a 64 KiB length prefix, then nothing
    held.append(t)
print("sent")
"""


def test_junk_and_hostile_clients_do_not_stop_it_serving(lab_factory: LabFactory) -> None:
    """Item 5: thousands of junk datagrams and more TCP connections than allowed (idle, or
    with a 64 KiB length prefix) from a container; the responder keeps answering, the agent
    keeps running, and counts what it dropped."""
    _, ol = _lab(lab_factory)
    ol.create_network(0, "jk", "--subnet", SUBNET)
    c0, c1 = ol.container("j0"), ol.container("j1")
    web = ol.create_endpoint(0, "jk", c0, "--name", "web")
    ol.create_endpoint(1, "jk", c1, "--name", "attacker")
    wait_for(lambda: nslookup(ol, c1, "web") == ("ok", [web["ipv4"]]), "web to resolve on host1", within=60)
    r = ol.in_container(c1, [sys.executable, "-c", HOSTILE, GATEWAY], timeout=120)
    assert "sent" in r.stdout, r.stderr
    ol.check_running(1)
    wait_for(lambda: nslookup(ol, c1, "web") == ("ok", [web["ipv4"]]), "web to resolve after the junk")
    dns = ol.request(1, "status")["dns"]
    assert dns["malformed"] > 0 and dns["tcp_rejected"] > 0, dns
    assert ol.ping(c1, web["ipv4"]), "the overlay itself is unaffected"


def test_no_dns_means_no_responder(lab_factory: LabFactory) -> None:
    """``--no-dns``: the gateway is there, nothing listens on port 53, no dns status."""
    lab = lab_factory(2)
    ol = OverlayLab(lab, extra=["--no-dns"])
    ol.start_all()
    ol.create_network(0, "nd", "--subnet", SUBNET)
    c0 = ol.container("n0")
    ol.create_endpoint(0, "nd", c0, "--name", "web")
    wait_for(lambda: ol.ping(c0, GATEWAY, count=1), "the gateway to answer pings")
    listening = lab.run(ol.nodes[0].host, ["ss", "-H", "-lnu", "sport", "=", ":53"]).stdout.strip()
    assert listening == "", listening
    assert "dns" not in ol.request(0, "status")
    assert nslookup(ol, c0, "web")[0] != "ok"


def test_aliases_resolve_on_every_host_shared_ones_answer_all_and_go_with_the_endpoint(
        lab_factory: LabFactory) -> None:
    """Item 1 (aliases): ``endpoint create --alias`` on host0 and host1; each alias resolves
    on the other host as ALIAS and ALIAS.NETWORK; an alias two endpoints share answers both
    addresses; removing one endpoint takes its aliases away everywhere (the shared one then
    answers the other's address only); ``endpoint ls`` shows them."""
    _, ol = _lab(lab_factory)
    ol.create_network(0, "al", "--subnet", SUBNET)
    c0, c1, c2 = ol.container("a0"), ol.container("a1"), ol.container("a2")
    db1 = ol.create_endpoint(0, "al", c0, "--name", "db1", "--alias", "db", "--alias", "primary")
    db2 = ol.create_endpoint(1, "al", c1, "--name", "db2", "--alias", "db")
    probe = ol.create_endpoint(1, "al", c2, "--name", "probe")
    assert db1["aliases"] == ["db", "primary"], db1

    def answers(name: str, where: str = c2) -> tuple[str, list[str]]:
        outcome, got = nslookup(ol, where, name)
        return outcome, sorted(got)

    both = sorted([db1["ipv4"], db2["ipv4"]])
    wait_for(lambda: answers("primary") == ("ok", [db1["ipv4"]]), "primary to resolve on host1", within=60)
    assert answers("primary.al") == ("ok", [db1["ipv4"]])
    wait_for(lambda: answers("db") == ("ok", both), "db to answer both addresses on host1", within=60)
    wait_for(lambda: answers("db", c0) == ("ok", both), "db to answer both addresses on host0", within=60)
    assert answers("db1", c0) == ("ok", [db1["ipv4"]])  # names still resolve beside aliases
    assert nslookup(ol, c0, probe["ipv4"], qtype="")[1] == ["probe.al"]  # PTR keeps the name
    listed = {e["name"]: e["aliases"] for e in ol.request(1, "endpoint", {"action": "ls"})}
    assert listed["db1"] == ["db", "primary"] and listed["db2"] == ["db"] and listed["probe"] == [], listed
    ol.ctl(0, "endpoint", "rm", db1["id"])
    wait_for(lambda: answers("primary")[0] == "NXDOMAIN", "primary to vanish on host1")
    wait_for(lambda: answers("db") == ("ok", [db2["ipv4"]]), "db to answer db2 only")


UPSTREAM = r"""
import socket, sys, threading
import dns.flags, dns.message, dns.rcode, dns.rrset
addr, log = sys.argv[1], sys.argv[2]
def answer(data):
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA
    qn = q.question[0]
    with open(log, "a") as f:  # every question that reached us
        f.write(qn.name.to_text() + "\n")
    if qn.name.to_text().lower() == "outside.test." and qn.rdtype == 1:
        r.answer.append(dns.rrset.from_text(qn.name, 60, "IN", "A", "203.0.113.7"))
    else:
        r.set_rcode(dns.rcode.NXDOMAIN)
    return r.to_wire()
def serve_tcp(s):
    while True:
        c, _ = s.accept()
        with c:
            n = int.from_bytes(c.recv(2), "big")
            data = b""
            while len(data) < n:
                data += c.recv(n - len(data))
            out = answer(data)
            c.sendall(len(out).to_bytes(2, "big") + out)
t = socket.create_server((addr, 53))
threading.Thread(target=serve_tcp, args=(t,), daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((addr, 53))
print("serving", flush=True)
while True:
    data, peer = u.recvfrom(4096)
    try:
        u.sendto(answer(data), peer)
    except Exception:
        pass
"""


def test_other_names_are_forwarded_to_the_hosts_resolver_for_members_only(
        lab_factory: LabFactory, tmp_path: Path) -> None:
    """Item 3, "forwarding everything else to the host's resolvers, refusing recursion for
    outsiders": host0's agent runs with a resolv.conf naming an upstream server in a third
    namespace (192.0.2.3; the agent's own mount namespace, so the machine's file is
    untouched); a container of the network gets the upstream's answer through the
    gateway over UDP and TCP, and its NXDOMAIN; a container of another network asking
    the same gateway is refused, and the upstream never sees its question; nor does it
    see those of an ``--internal`` network's container (refused: no egress, DNS
    included), whose own names still resolve."""
    lab = lab_factory(3)
    upstream = lab.hosts[2]
    ol = OverlayLab(lab, hosts=lab.hosts[:1])
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"# the lab's upstream\nnameserver {upstream.addr}\n")
    log = tmp_path / "upstream.log"
    log.touch()
    server = lab.spawn(upstream, [sys.executable, "-u", "-c", UPSTREAM, upstream.addr, str(log)], name="upstream-dns")
    wait_for(lambda: "serving" in server.log_text() or not server.running(), "the upstream to serve")
    assert server.running(), server.log_text()
    node = ol.nodes[0]
    argv = agent_argv(node.name, node.host.addr, node.socket, profile=ol.profile, state_dir=node.state_dir)
    # A mount namespace of the agent's own (slave: the lab's later /run/netns mounts
    # still reach it) with our resolv.conf bound over /etc/resolv.conf.
    wrap = ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]
    node.proc = lab.spawn(node.host, [*wrap, *argv], name=f"{node.name}-resolv")
    ol.wait_ready(0)
    ol.create_network(0, "fw", "--subnet", SUBNET)
    ol.create_network(0, "other", "--subnet", "10.54.0.0/24")
    c0, c1 = ol.container("f0"), ol.container("f1")
    ol.create_endpoint(0, "fw", c0, "--name", "web")
    ol.create_endpoint(0, "other", c1, "--name", "stranger")
    wait_for(lambda: nslookup(ol, c0, "outside.test") == ("ok", ["203.0.113.7"]), "the forwarded answer (UDP)")
    rcode, flags, got = query_tcp(ol, c0, "outside.test", "A")
    assert (rcode, got) == ("NOERROR", ["203.0.113.7"]) and "AA" not in flags, (rcode, flags, got)
    assert nslookup(ol, c0, "nowhere.test")[0] == "NXDOMAIN"  # the upstream's own answer
    assert nslookup(ol, c0, "web")[0] == "ok"  # ours are still ours
    asked = log.read_text().splitlines()
    assert "outside.test." in asked and "nowhere.test." in asked and "web." not in asked, asked
    before = len(asked)
    assert nslookup(ol, c1, "outside.test", server=GATEWAY)[0] == "REFUSED"
    assert query_tcp(ol, c1, "refused.test", "A", server=GATEWAY)[0] == "REFUSED"
    assert len(log.read_text().splitlines()) == before, "an outsider's question reached the upstream"
    ol.create_network(0, "shut", "--subnet", "10.55.0.0/24", "--internal")
    c2 = ol.container("f2")
    vault = ol.create_endpoint(0, "shut", c2, "--name", "vault")
    wait_for(lambda: nslookup(ol, c2, "vault", server="10.55.0.1") == ("ok", [vault["ipv4"]]),
             "the internal network's own names")
    assert nslookup(ol, c2, "outside.test", server="10.55.0.1")[0] == "REFUSED"
    assert query_tcp(ol, c2, "outside.test", "A", server="10.55.0.1")[0] == "REFUSED"
    assert len(log.read_text().splitlines()) == before, "an internal network's question reached the upstream"
    ol.check_running(0)


def test_a_container_on_two_networks_resolves_the_names_of_both(lab_factory: LabFactory) -> None:
    """A container on networks na and nb (host0) asks na's gateway, its first nameserver,
    for a container of nb on host1: answered (``NAME`` and ``NAME.nb``), as Docker's
    embedded DNS resolves every network of a container; a container only on na gets
    NXDOMAIN (its resolver stops there: no name of nb leaks to it)."""
    _, ol = _lab(lab_factory)
    ol.create_network(0, "na", "--subnet", "10.56.0.0/24")
    ol.create_network(0, "nb", "--subnet", "10.57.0.0/24")
    both, only, far = ol.container("t0"), ol.container("t1"), ol.container("t2")
    ol.create_endpoint(0, "na", both, "--name", "both")
    ol.create_endpoint(0, "nb", both, "--name", "both-b", "--ifname", "eth1")
    only_ep = ol.create_endpoint(0, "na", only, "--name", "only")
    target = ol.create_endpoint(1, "nb", far, "--name", "far-b")
    wait_for(lambda: nslookup(ol, both, "far-b", server="10.56.0.1") == ("ok", [target["ipv4"]]),
             "far-b (nb, host1) through na's gateway", within=60)
    assert nslookup(ol, both, "far-b.nb", server="10.56.0.1") == ("ok", [target["ipv4"]])
    assert nslookup(ol, both, "only", server="10.56.0.1") == ("ok", [only_ep["ipv4"]])  # na's own names too
    assert nslookup(ol, only, "far-b", server="10.56.0.1")[0] == "NXDOMAIN"
