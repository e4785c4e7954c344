"""Docker endpoints named after their containers (issue 12, item 3), the pure parts.

The rename of a published endpoint row (``Tables.rename_endpoint``) reaching the
network's peers without changing the endpoint, and the Docker API answers
(``agent.runtimes.docker.dockerapi``) read into a container's name, bounded.
The real dockerd case is in tests/runtimes/test_docker_plugin.py.
"""

from __future__ import annotations

import pytest

from gossip.tables.rows import TableError
from tests.stateful.tablesnet import cluster


def test_rename_reaches_peers_and_keeps_the_endpoint() -> None:
    net = cluster(2)
    net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"]))
    net.wait(lambda: all(n.tables.networks() for n in net.nodes.values()), timeout=60)
    ep = net.call("n0", lambda t: t.create_endpoint(net.now, "web"))
    other = net.call("n0", lambda t: t.create_endpoint(net.now, "web", name="db"))
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="peer"))
    net.run_for(0.5)
    assert ep.name == f"ep-{ep.id[:12]}"
    renamed = net.call("n0", lambda t: t.rename_endpoint(net.now, ep.id, "web-a"))
    assert (renamed.id, renamed.ipv4, renamed.mac, renamed.created) == (ep.id, ep.ipv4, ep.mac, ep.created)
    net.run_for(0.5)
    seen = {e.id: e.name for e in net.nodes["n1"].tables.endpoints()}
    assert seen[ep.id] == "web-a" and seen[other.id] == "db"
    # a name taken on this node, or not a valid name, is refused and changes nothing
    with pytest.raises(TableError, match="already exists"):
        net.call("n0", lambda t: t.rename_endpoint(net.now, ep.id, "db"))
    with pytest.raises(TableError, match="invalid endpoint name"):
        net.call("n0", lambda t: t.rename_endpoint(net.now, ep.id, "bad name"))
    assert net.nodes["n0"].tables.find_endpoint(ep.id).name == "web-a"
    # the same name again: nothing to send
    assert net.call("n0", lambda t: t.rename_endpoint(net.now, ep.id, "web-a")).name == "web-a"
