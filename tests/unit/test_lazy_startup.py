"""What an agent without networks does not load (issue 17 item 4, RSS), and that loading it
later changes nothing: a node with no networks merges network rows and network-option
rows from a peer exactly as before, the deferred modules load with the first of them;
the daemon drops its command line once its configuration is built; the code cache's
compact index finds what the dict did.

Each check of ``sys.modules`` runs in a fresh interpreter (the test process has loaded
everything already)."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent import codecache
from agent.overlay.base import OPS
from agent.overlay.extension import Overlay
from gossip.tables import netopts
from gossip.tables.replica import Tables

ROOT = Path(__file__).resolve().parents[2]

NETWORK_ONLY = (
    "gossip.tables.ipam", "gossip.tables.blocks", "gossip.tables.netopts", "gossip.tables.extras",
    "gossip.tables.aliases", "gossip.tables.hostaccess", "gossip.tables.validation",
    "agent.overlay.ops", "agent.runtimes.cni.attachments",
)
PARSER = ("argparse", "gettext", "locale", "agent.cli", "agent.configload")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_agent_modules_leave_network_only_code_unloaded_until_a_network_row_arrives() -> None:
    out = _run(f"""
        import random, sys
        import agent.service, agent.overlay.extension, agent.overlay.ipsec
        from gossip.tables.replica import Tables

        def loaded():
            return sorted(m for m in {NETWORK_ONLY!r} if m in sys.modules)

        print("imports", loaded())
        a = Tables(node="a", vtep="192.0.2.1", rng=random.Random(1))
        b = Tables(node="b", vtep="192.0.2.2", rng=random.Random(2))
        b.merge_remote_state(0.0, a.local_state(False), False)  # nothing to say: empty
        b.tick(10_000.0)  # the reap tick: no options to tidy
        b.check_invariants()
        print("idle", loaded(), b.host_endpoint("x"), b.networks())
    """)
    assert "imports []" in out and "idle [] None []" in out, out


def test_a_node_without_networks_merges_network_and_option_rows_as_before() -> None:
    a = Tables(node="a", vtep="192.0.2.1", rng=random.Random(1))
    subnets, opts = netopts.parse_options(["10.9.0.0/24"], host_access=True)
    a.create_network(0.0, "web", list(subnets), vni=5001, options=opts)
    a.create_network(0.0, "db", ["10.2.0.0/24"])
    b = Tables(node="b", vtep="192.0.2.2", rng=random.Random(2))
    assert b._extras is None and b.networks() == []
    b.merge_remote_state(1.0, a.local_state(False), False)  # networks and their options rows
    assert b._extras is not None  # loaded with the first network row
    assert [(n.name, n.options) for n in b.networks()] == [(n.name, n.options) for n in a.networks()]
    assert b.find_network("web").options == opts and b.ext.cluster_rows()
    c = Tables(node="c", vtep="192.0.2.3", rng=random.Random(3))
    c.merge_remote_state(2.0, b.local_state(False), False)  # relayed by b as it got them
    assert [(n.id, n.options) for n in c.networks()] == [(n.id, n.options) for n in a.networks()]
    for t in (a, b, c):
        t.check_invariants()


def test_the_first_network_row_loads_the_network_code_in_a_fresh_interpreter() -> None:
    a = Tables(node="a", vtep="192.0.2.1", rng=random.Random(1))
    subnets, opts = netopts.parse_options(["10.9.0.0/24"], host_access=True)
    a.create_network(0.0, "web", list(subnets), options=opts)
    state = a.local_state(False)
    out = _run(f"""
        import random, sys
        from gossip.tables.replica import Tables
        b = Tables(node="b", vtep="192.0.2.2", rng=random.Random(2))
        before = [m for m in {NETWORK_ONLY[:6]!r} if m in sys.modules]
        b.merge_remote_state(1.0, {state!r}, False)
        after = [m for m in {NETWORK_ONLY[:6]!r} if m in sys.modules]
        print(before, len(after), [(n.name, n.options is not None) for n in b.networks()])
    """)
    assert out.split("\n")[0] == "[] 6 [('web', True)]", out


def test_layer_ops_are_registered_before_their_code_loads() -> None:
    o = Overlay()
    ops = o._layer_ops()  # asserts names, summaries and flags match OPS
    assert set(ops) == set(OPS)
    assert o._layer_ops() is ops


def test_daemon_drops_its_command_line_and_check_config_keeps_it() -> None:
    out = _run(f"""
        import gc, sys
        gc.disable()
        from agent import __main__ as m
        name, config, loaded, show = m._parse(["--node", "a", "--bind", "127.0.0.1:7946"])
        left = [m for m in {PARSER!r} if m in sys.modules]
        dicts = [d["__name__"] for d in gc.get_objects()
                 if isinstance(d, dict) and d.get("__name__") in {PARSER!r}]
        print(name, config.node, config.bind, loaded, left, dicts)
        name, config, loaded, show = m._parse(["check-config", "--node", "b", "--bind", "127.0.0.1"])
        print(name, config.node, type(loaded).__name__, "argparse" in sys.modules)
    """)
    lines = out.split("\n")
    assert lines[0] == "run a ('127.0.0.1', 7946) None [] []", out
    assert lines[1] == "check-config b Loaded True", out


def test_daemon_puts_shutil_back_behind_its_placeholder_after_parsing() -> None:
    # argparse's help formatter loads shutil while flags are added; once the parser is gone
    # the daemon holds a fresh placeholder, which still loads the real module when used.
    out = _run("""
        import gc, sys
        gc.disable()
        from agent import deferred
        deferred.defer("shutil")
        from agent import __main__ as m
        m._parse(["--node", "a", "--bind", "127.0.0.1:7946"])
        held = [o for o in gc.get_objects() if isinstance(o, dict) and o.get("__name__") == "shutil"
                and "get_terminal_size" in o]
        print(deferred.is_deferred("shutil"), len(held))
        import shutil
        print(shutil.which("sh") is not None, deferred.is_deferred("shutil"))
    """)
    assert out.split("\n")[:2] == ["True 0", "True False"], out


def test_compact_index_finds_what_the_dict_held() -> None:
    rng = random.Random(7)
    index = {rng.randbytes(16): (rng.randrange(1 << 31), rng.randrange(1 << 16)) for _ in range(300)}
    spans = codecache._Spans(index)
    assert len(spans) == len(index)
    assert all(spans.get(k) == v for k, v in index.items())
    assert dict(spans.items()) == index
    assert spans.get(b"\0" * 16) is None and spans.get(b"\xff" * 16) is None
    assert codecache._Spans({}).get(b"x" * 16) is None


@pytest.mark.parametrize("index", [{b"short": (0, 1)}, {b"k" * 16: (0, 1 << 32)}, {b"k" * 16: (0,)},
                                   {"k" * 16: (0, 1)}])
def test_load_refuses_an_index_the_compact_form_cannot_hold(tmp_path: Path, index: dict[Any, Any]) -> None:
    import marshal

    path = tmp_path / "c.marshal"
    path.write_bytes(codecache._HEADER + marshal.dumps((index, b"x")))
    assert codecache.load(path) == ({}, b"")
