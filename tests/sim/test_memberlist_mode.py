"""With the three switches that go beyond memberlist turned off, the core behaves exactly
as it did before they existed: the same simulated runs give byte-identical traces.

The hashes below are those of the core at commit 2e66281 (before compressed packing,
beat-less quiet gossip and ICMP fast-fail), for the same RunSpec. The simulator's
fidelity comparison with serf (docs/simulation.md §3) relies on this mode.
"""

from __future__ import annotations

import pytest

from sim.run import RunSpec, execute

MEMBERLIST_MODE = (
    ("compressed_packing", "false"),
    ("relay_at_once", "false"),
    ("fail_probe_on_unreachable", "false"),
)


@pytest.mark.parametrize(
    ("scenario", "trace_hash"),
    [
        ("bootstrap:seeds=1:spread=0.14,crash:count=1:at=20", "863a6b7f5b3c5bef7d978b125b1a8fd9"),
        # Since issue 16 every member relays a serf leave intent once, as serf members do
        # (was 46c64dcf500ee136355a2e52fd8525a6); memberlist's timing is unchanged.
        ("converged,partition:at=5:heal=20,leave:count=2:at=8", "0dc7c6f73ab4ec326361b67494a2db69"),
    ],
)
def test_memberlist_mode_reproduces_the_earlier_core_exactly(scenario: str, trace_hash: str) -> None:
    spec = RunSpec(nodes=20, duration=30.0, scenario=scenario, seed=1, overrides=MEMBERLIST_MODE)
    assert execute(spec).result["trace_hash"] == trace_hash


def test_the_defaults_differ_from_memberlist_mode() -> None:
    scenario = "bootstrap:seeds=1:spread=0.14,crash:count=1:at=20"
    default = execute(RunSpec(nodes=20, duration=30.0, scenario=scenario, seed=1)).result
    assert default["trace_hash"] != "863a6b7f5b3c5bef7d978b125b1a8fd9"
    # The crash is detected sooner: ICMP fails the first probe at once.
    ml = execute(RunSpec(nodes=20, duration=30.0, scenario=scenario, seed=1,
                         overrides=MEMBERLIST_MODE)).result
    assert default["detection"]["all_observers_failed"]["max"] < ml["detection"]["all_observers_failed"]["max"]
