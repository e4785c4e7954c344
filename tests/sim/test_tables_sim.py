"""The ``endpoints`` scenario: the real replicated tables driven by the simulator.

Small runs (60 nodes, 3 networks of 10, ~25 simulated seconds, about a second each):
every endpoint row reaches every member of its network, scoped rows stay inside
their network and whole-cluster rows do not, the tracker agrees with
``Tables.endpoints()``, bytes are accounted, and runs are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gossip.tables.view import ViewSource
from sim import scenarios
from sim.__main__ import main
from sim.run import Outcome, RunSpec, execute
from sim.tablesim import RowTracker, TablesFactory

SPEC = "converged,endpoints:networks=3:size=10:rate=1:start=3:tail=12:bulksync=5"


def run(scoped: bool, seed: int = 1, nodes: int = 60, duration: float = 25.0) -> Outcome:
    spec = RunSpec(nodes=nodes, duration=duration, scenario=f"{SPEC}:scoped={int(scoped)}", seed=seed,
                   overrides=(("enable_compression", "false"),))
    return execute(spec)


@pytest.fixture(scope="module")
def scoped() -> Outcome:
    return run(True)


@pytest.fixture(scope="module")
def whole() -> Outcome:
    return run(False)


def tracker(o: Outcome) -> RowTracker:
    t = o.metrics.extensions["endpoints"]
    assert isinstance(t, RowTracker)
    return t


def ep(o: Outcome) -> dict[str, Any]:
    section = o.result["endpoints"]
    assert isinstance(section, dict)
    return section


@pytest.mark.parametrize("mode", ["scoped", "whole"])
def test_every_row_reaches_every_member_of_its_network(mode: str, request: pytest.FixtureRequest) -> None:
    o: Outcome = request.getfixturevalue(mode)
    e = ep(o)
    assert e["consistent_at_start"] == {"members_missing_endpoints": 0, "nodes_missing_networks": 0}
    # One endpoint per network per second from t=3 to t=13.
    assert e["rows"] == 30
    assert e["rows_reaching_all_members"] == e["rows"]
    assert e["t100"]["count"] == e["rows"] and e["t100"]["max"] is not None
    assert e["t50"]["p50"] <= e["t100"]["p50"]
    assert o.result["core"]["decode_errors"] == 0


@pytest.mark.parametrize("mode", ["scoped", "whole"])
def test_tracker_agrees_with_the_tables_own_view(mode: str, request: pytest.FixtureRequest) -> None:
    o: Outcome = request.getfixturevalue(mode)
    t = tracker(o)
    assert t.plan is not None and isinstance(t.factory, TablesFactory)
    for r in t.rows:
        seen = [i for i in range(o.world.n) if r.seen[i] == 2]
        for i in seen:
            ids = {x.id for x in t.factory.at(i).endpoints(r.net)}
            assert r.key[1] in ids, (r.index, i)
        assert r.left == 0
    # Every member ends up with every endpoint of its network, in what its dataplane
    # would be told too (the agent's view builder, run on the simulated replica).
    for k, members in enumerate(t.plan.members):
        net = t.plan.net_ids[k]
        created = 10 + sum(1 for r in t.rows if r.net_index == k)
        for i in members:
            replica = t.factory.at(i)
            assert len(replica.endpoints(net)) == created
            assert replica.swim is not None
            view = ViewSource(replica, replica.swim.members, local_vtep=replica.vtep, underlay_mtu=1500,
                              vxlan_port=4789, prefix="ov-", ifname=lambda ep_id: "ov-" + ep_id[:12])()
            assert sum(1 for e in view.endpoints if e.network_id == net) == created


def test_scoped_rows_stay_inside_their_network(scoped: Outcome) -> None:
    e = ep(scoped)
    assert e["non_member_sightings"] == 0
    assert e["outsiders_holding_rows"] == 0
    assert e["participants_mean"] == 9  # the other members only


def test_whole_cluster_rows_reach_non_members(whole: Outcome) -> None:
    e = ep(whole)
    assert e["participants_mean"] == 59  # everyone but the owner takes part
    assert e["non_member_sightings"] == 30 * 50  # every non-member saw every row
    # Every node holds rows of a network it is not a member of (30 belong to none,
    # the 30 members of each network hold the other two networks' rows).
    assert e["outsiders_holding_rows"] == 60
    assert e["t100_all_participants"]["count"] == 30


def test_bytes_are_accounted_and_scoping_sends_fewer_table_bytes(scoped: Outcome, whole: Outcome) -> None:
    bs, bw = ep(scoped)["bytes_per_node_per_s"], ep(whole)["bytes_per_node_per_s"]
    for b in (bs, bw):
        assert b["total"] > 0 and b["tables"] > 0 and b["membership"] > 0
        assert b["tables_net_gossip"] > 0 and b["tables_bulk_sync"] > 0
        assert b["total"] == pytest.approx(b["udp"] + b["tcp"])
        assert b["tables"] == pytest.approx(b["tables_net_gossip"] + b["tables_bulk_sync"]
                                            + b["tables_piggyback"] + b["tables_push_pull_state"])
    assert bs["tables"] < bw["tables"]
    assert bs["tables_net_gossip"] < bw["tables_net_gossip"]


def test_same_seed_same_trace_and_rows() -> None:
    a, b = run(True, seed=3, nodes=40, duration=18), run(True, seed=3, nodes=40, duration=18)
    assert a.result["trace_hash"] == b.result["trace_hash"]
    assert ep(a) == ep(b)
    c = run(True, seed=4, nodes=40, duration=18)
    assert c.result["trace_hash"] != a.result["trace_hash"]


@pytest.mark.parametrize(("spec", "message"), [
    ("endpoints:networks=7:size=10", "need 70 nodes"),
    ("endpoints:size=1", "size >= 2"),
    ("endpoints:networks=2:size=5:start=50", "no time to create"),
    ("bootstrap,endpoints:networks=2:size=5", "converged start"),
])
def test_bad_endpoint_scenarios_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(scenarios.ScenarioError, match=message):
        execute(RunSpec(nodes=60, duration=20, scenario=spec))


def test_cli_writes_csv_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["-n", "30", "-d", "10", "-s", "endpoints:networks=2:size=8:start=2:tail=4",
                 "--out", str(out), "--no-progress"]) == 0
    assert "endpoint rows (scoped)" in capsys.readouterr().out
    header = (out / "endpoints.csv").read_text().splitlines()[0]
    assert header.startswith("row,network,owner,created_at,members")
    assert (out / "endpoints_bytes.csv").read_text().count("\n") > 5
    result = json.loads((out / "result.json").read_text())
    assert result["endpoints"]["rows"] == 8
    pytest.importorskip("matplotlib")
    assert (out / "endpoints.png").stat().st_size > 0
    from sim import tablesplots

    assert tablesplots.main(["compare", str(tmp_path / "c.png"), f"a={out}", f"b={out}"]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0
