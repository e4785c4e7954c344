"""The simulator's compact member tables (issue 15 item 3): converged nodes share one
member image and keep only what changed, and a restarted node's table (built by real
joins) is a plain one on the same shared name index. The behaviour is pinned by the
trace hashes in test_memberlist_mode.py / test_protocol.py and by the differential
test in tests/unit/test_membertable.py; this checks the layout itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossip.membertable import MemberImage
from gossip.swim import Swim
from sim.run import RunSpec, execute


def test_converged_nodes_share_one_image_and_store_only_their_changes() -> None:
    n = 300
    out = execute(RunSpec(nodes=n, duration=20, scenario="converged,crash:count=3:at=2:restart=8", seed=3))
    cores = [node.core for node in out.world.nodes if node.core is not None]
    assert len(cores) == n
    tables = [c._table for c in cores if isinstance(c, Swim)]
    images = {id(t._image) for t in tables if t._image is not None}
    sharing = [t for t in tables if t._image is not None]
    assert len(images) == 1 and isinstance(sharing[0]._image, MemberImage)
    # Everyone saw 3 crashes (suspect, dead) and 3 rejoins: a few changed members each,
    # far below an own copy of 300 (the 3 restarted nodes built theirs by joining).
    assert len(sharing) >= n - 3
    assert all(len(t._over) < 40 for t in sharing)
    names = {id(t._index) for t in tables}
    assert len(names) == 1  # one name index for every node, restarted ones included
    for t in tables:
        t.check_invariants()
        assert len(t.members) == n
    assert out.result["member_events"]["suspected"] > 0 and out.result["crashes"] == 3


def test_hashcheck_compares_with_a_recorded_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sim import hashcheck

    args = ["--nodes", "12", "--duration", "3", "--seeds", "4"]
    assert hashcheck.main(args) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert len(recorded) == len(hashcheck.SCENARIOS) and len(set(recorded.values())) > 5
    (tmp_path / "ok.json").write_text(json.dumps(recorded))
    assert hashcheck.main([*args, "--against", str(tmp_path / "ok.json")]) == 0
    key = next(iter(recorded))
    (tmp_path / "bad.json").write_text(json.dumps({**recorded, key: "0" * 32}))
    assert hashcheck.main([*args, "--against", str(tmp_path / "bad.json")]) == 1
    assert f"MISMATCH {key}" in capsys.readouterr().err
