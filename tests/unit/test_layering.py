"""The tree's layering, read from the source with ``ast`` (nothing here imports our modules).

Three rules, each checked on the real tree and, by a self-test, shown to fail on a
small synthetic tree that breaks it (so a checker that silently passes everything
cannot hide):

1. Purity: ``crypto/``, ``gossip/`` and the pure dataplane modules (``PURE_DATAPLANE``)
   never import trio, time, threading, asyncio, select or subprocess, never call a
   module-level ``random`` function (the ``random.Random`` type is fine: it is seeded by
   the caller) and never create a socket (address helpers like ``socket.inet_pton`` are
   fine). ``sim/`` drives the sans-IO core directly: no trio and no sockets there.
2. Ranks: a module imports only its own group or groups of lower rank (``GROUPS``);
   groups of equal rank never import each other.
3. No import cycle between our modules.

Counted as an import: every ``import``/``from ... import`` anywhere in a module,
function bodies included (a function-level import is still a dependency; it only
runs later), except inside ``if TYPE_CHECKING:``. ``from pkg import name`` counts as
an import of ``pkg.name`` when that is one of our modules, else of ``pkg``.
The map of the layers in prose is docs/design.md.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("crypto", "gossip", "dataplane", "agent", "sim", "bench")

# (group, rank, module prefixes). A module belongs to the group with the longest
# matching prefix, so ``gossip.wire.codec`` is in "gossip.wire", not "gossip core".
GROUPS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("crypto", 0, ("crypto",)),
    (
        "gossip base values",
        1,
        ("gossip.errors", "gossip.members", "gossip.effects", "gossip.config", "gossip.delegate",
         "gossip.limits"),
    ),
    ("dataplane", 1, ("dataplane",)),
    ("gossip.wire", 2, ("gossip.wire",)),
    ("gossip.serf", 3, ("gossip.serf",)),
    ("gossip core", 4, ("gossip",)),
    ("gossip.tables", 5, ("gossip.tables",)),
    ("agent", 6, ("agent",)),
    ("sim", 6, ("sim",)),
    ("bench", 7, ("bench",)),
)

# The dataplane modules that compute instead of doing I/O: value types, naming,
# message encoding, compiling the desired state and planning the changes, for VXLAN
# and for XFRM. Every entry must exist and every dataplane module named like one
# (``PURE_STEMS``) must be listed (tests check both), so neither a rename nor a new
# package drops a module from the purity check unnoticed; kernel I/O, probes,
# monitors and the reconciler loop are not on the list.
PURE_DATAPLANE = (
    "dataplane.model",
    "dataplane.naming",
    "dataplane.compile",
    "dataplane.plan",
    "dataplane.xfrm.model",
    "dataplane.xfrm.codec",
    "dataplane.xfrm.compile",
    "dataplane.xfrm.plan",
    "dataplane.nft.model",
    "dataplane.nft.rules",
    "dataplane.nft.compile",
    "dataplane.nft.plan",
)
PURE_STEMS = frozenset({"model", "naming", "codec", "compile", "plan"})

IMPURE_MODULES = frozenset({"trio", "time", "threading", "asyncio", "select", "subprocess"})
SIM_FORBIDDEN = frozenset({"trio", "socket", "agent", "bench"})
# ``socket`` attributes that make a socket; everything else there (inet_pton,
# AF_INET, constants) is plain data and stays allowed.
SOCKET_MAKERS = frozenset(
    {"socket", "socketpair", "create_connection", "create_server", "fromfd", "fromshare", "SocketType"}
)
RANDOM_ALLOWED = frozenset({"Random"})


# --- reading the tree ---------------------------------------------------------


def module_files(root: Path) -> dict[str, Path]:
    """Every module of our packages, by dotted name (``pkg/__init__.py`` is ``pkg``)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run, i.e. all of them but the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


@dataclass(frozen=True)
class Imported:
    """One name an import statement binds: ``module`` is the full dotted target."""

    module: str
    line: int


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path) -> list[Imported]:
    """What a module imports, function-level imports included, TYPE_CHECKING aside."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Imported] = []
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [Imported(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node, is_package)
            found += [Imported(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest of our modules that ``name`` (a module or ``module.attribute``) names."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: first line}; self-imports (``from . import x``
    inside ``pkg/__init__``) are left out."""
    modules = module_files(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for imported in imports_of(module, path):
            target = resolve(imported.module, modules)
            if target is not None and target != module:
                edges[target] = min(edges.get(target, imported.line), imported.line)
        graph[module] = edges
    return graph


# --- the three checks -----------------------------------------------------------


def group_of(module: str) -> tuple[str, int] | None:
    best: tuple[int, str, int] | None = None
    for name, rank, prefixes in GROUPS:
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name, rank)
    return None if best is None else (best[1], best[2])


def pure_modules(root: Path) -> list[str]:
    modules = module_files(root)
    pure = [m for m in modules if m.split(".")[0] in ("crypto", "gossip")]
    return pure + [m for m in PURE_DATAPLANE if m in modules]


def _aliases(tree: ast.AST, target: str) -> set[str]:
    """Local names bound to module ``target`` (``import random as rnd`` -> rnd)."""
    names = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == target:
                    names.add(alias.asname or alias.name)
    return names


def _annotations(tree: ast.AST) -> Iterator[ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            yield node.annotation
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def impurities(module: str, path: Path, forbidden: frozenset[str] = IMPURE_MODULES) -> list[str]:
    """Why ``module`` is not sans-IO: clock/thread/IO imports, global random, sockets."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for imported in imports_of(module, path):
        top = imported.module.split(".")[0]
        if top in forbidden:
            found.append(f"{module}:{imported.line} imports {imported.module}")
    random_names = _aliases(tree, "random")
    socket_names = _aliases(tree, "socket")
    in_annotations = {id(n) for a in _annotations(tree) for n in ast.walk(a)}
    for node in runtime_nodes(tree):
        if id(node) in in_annotations:
            continue  # ``sock: socket.socket`` names a type, it makes no socket
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                if node.module == "random" and alias.name not in RANDOM_ALLOWED:
                    found.append(f"{module}:{node.lineno} imports random.{alias.name}")
                if node.module == "socket" and alias.name in SOCKET_MAKERS:
                    found.append(f"{module}:{node.lineno} imports socket.{alias.name}")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in random_names and node.attr not in RANDOM_ALLOWED:
                found.append(f"{module}:{node.lineno} uses random.{node.attr} (global state)")
            if node.value.id in socket_names and node.attr in SOCKET_MAKERS:
                found.append(f"{module}:{node.lineno} uses socket.{node.attr}")
    return found


def purity_violations(root: Path) -> list[str]:
    modules = module_files(root)
    return [v for m in pure_modules(root) for v in impurities(m, modules[m])]


def sim_violations(root: Path) -> list[str]:
    modules = module_files(root)
    return [v for m, p in modules.items() if m.split(".")[0] == "sim" for v in impurities(m, p, SIM_FORBIDDEN)]


def rank_violations(root: Path) -> list[str]:
    found = []
    for module, edges in import_graph(root).items():
        mine = group_of(module)
        if mine is None:
            continue
        for target, line in edges.items():
            theirs = group_of(target)
            if theirs is None or theirs[0] == mine[0] or theirs[1] < mine[1]:
                continue
            found.append(
                f"{module}:{line} imports {target}: {mine[0]} (rank {mine[1]}) may not "
                f"import {theirs[0]} (rank {theirs[1]})"
            )
    return found


def cycles(root: Path) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each
    given as one cycle through it so the message shows a path to break."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt not in members:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if nxt not in parents:
                parents[nxt] = node
                queue.append(nxt)
    return component  # unreachable for a real component


def _render(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


# --- the real tree ----------------------------------------------------------------


def test_pure_dataplane_list_names_existing_modules() -> None:
    modules = module_files(ROOT)
    missing = [m for m in PURE_DATAPLANE if m not in modules]
    assert not missing, f"PURE_DATAPLANE names modules that do not exist: {missing}"


def test_every_pure_looking_dataplane_module_is_listed() -> None:
    unlisted = [
        m for m in module_files(ROOT)
        if m.startswith("dataplane.") and m.split(".")[-1] in PURE_STEMS and m not in PURE_DATAPLANE
    ]
    assert not unlisted, f"add to PURE_DATAPLANE (or rename): {unlisted}"


def test_core_is_sans_io() -> None:
    assert pure_modules(ROOT)
    violations = purity_violations(ROOT)
    assert not violations, "\n".join(violations)


def test_sim_uses_no_trio_sockets_agent_or_bench() -> None:
    violations = sim_violations(ROOT)
    assert not violations, "\n".join(violations)


def test_no_module_imports_a_higher_layer() -> None:
    violations = rank_violations(ROOT)
    assert not violations, "\n".join(violations)


def test_every_module_has_a_group() -> None:
    loose = [m for m in module_files(ROOT) if group_of(m) is None]
    assert not loose, f"modules outside every layer group: {loose}"


def test_lab_runs_the_agent_from_outside() -> None:
    """agent.lab sits in the product package so the demo need not import bench, but it
    drives the agent as installed programs: it imports nothing else of ``agent``."""
    inside = [
        f"{module} imports {target}"
        for module, edges in import_graph(ROOT).items()
        if module.startswith("agent.lab")
        for target in edges
        if target.split(".")[0] == "agent" and not target.startswith("agent.lab")
    ]
    assert not inside, "\n".join(inside)


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    found = cycles(ROOT)
    assert not found, "\n".join(_render(c, graph) for c in found)


# --- the checkers themselves, on synthetic trees -----------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        for parent in path.relative_to(root).parents:
            if parent != Path("."):
                (root / parent / "__init__.py").touch(exist_ok=True)
    return root


PURITY_CASES = {
    "imports time": ("gossip/core.py", "import time\n", True),
    "from time import": ("crypto/k.py", "from time import monotonic\n", True),
    "imports trio in a function": ("gossip/core.py", "def f():\n    import trio\n", True),
    "from subprocess import run": ("dataplane/plan.py", "from subprocess import run\n", True),
    "global random": ("gossip/core.py", "import random\nx = random.random()\n", True),
    "global random, aliased": ("gossip/core.py", "import random as r\nr.shuffle([])\n", True),
    "from random import choice": ("gossip/core.py", "from random import choice\n", True),
    "creates a socket": ("dataplane/model.py", "import socket\ns = socket.socket()\n", True),
    "socketpair": ("gossip/wire/x.py", "import socket\nsocket.socketpair()\n", True),
    "from socket import create_connection": (
        "crypto/k.py",
        "from socket import create_connection\n",
        True,
    ),
    "random.Random is fine": ("gossip/core.py", "import random\nr = random.Random(1)\n", False),
    "a socket type in an annotation is fine": (
        "gossip/core.py",
        "import socket\ndef f(s: socket.socket) -> socket.socket:\n    x: socket.socket = s\n    return x\n",
        False,
    ),
    "inet_pton is fine": ("dataplane/model.py", "import socket\nsocket.inet_pton(2, '1')\n", False),
    "TYPE_CHECKING is fine": (
        "gossip/core.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import trio\n",
        False,
    ),
    "impure dataplane module is not checked": ("dataplane/kernel.py", "import time\n", False),
}


@pytest.mark.parametrize("case", sorted(PURITY_CASES))
def test_purity_checker(tmp_path: Path, case: str) -> None:
    name, text, bad = PURITY_CASES[case]
    root = _tree(tmp_path, {"dataplane/model.py": "", "dataplane/plan.py": ""} | {name: text})
    assert bool(purity_violations(root)) is bad


SIM_CASES = {
    "sim imports trio": ("import trio\n", True),
    "sim imports agent": ("from agent.x import y\n", True),
    "sim creates a socket": ("import socket\nsocket.socket()\n", True),
    "sim imports gossip": ("from gossip.swim import Swim\n", False),
}


@pytest.mark.parametrize("case", sorted(SIM_CASES))
def test_sim_checker(tmp_path: Path, case: str) -> None:
    text, bad = SIM_CASES[case]
    root = _tree(tmp_path, {"sim/world.py": text})
    assert bool(sim_violations(root)) is bad


RANK_CASES = {
    "serf imports the core": ("gossip/serf/q.py", "from gossip.swim import Swim\n", True),
    "wire imports serf": ("gossip/wire/codec.py", "import gossip.serf.q\n", True),
    "core imports tables": ("gossip/swim.py", "def f():\n    from gossip.tables import replica\n", True),
    "dataplane imports gossip base (equal rank)": ("dataplane/model.py", "import gossip.errors\n", True),
    "agent imports sim (equal rank)": ("agent/x.py", "from sim import world\n", True),
    "sim imports bench": ("sim/world.py", "import bench.cluster\n", True),
    "crypto imports dataplane": ("crypto/k.py", "from dataplane.model import X\n", True),
    "relative import upwards": ("gossip/wire/codec.py", "from ..serf import q\n", True),
    "tables import the core and dataplane": (
        "gossip/tables/replica.py",
        "from gossip import swim\nfrom dataplane.model import X\n",
        False,
    ),
    "serf imports base values and wire": (
        "gossip/serf/q.py",
        "from gossip.effects import E\nfrom gossip.wire import codec\n",
        False,
    ),
    "TYPE_CHECKING is fine": (
        "gossip/wire/codec.py",
        "import typing\nif typing.TYPE_CHECKING:\n    from gossip.swim import Swim\n",
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(RANK_CASES))
def test_rank_checker(tmp_path: Path, case: str) -> None:
    name, text, bad = RANK_CASES[case]
    others = {
        "gossip/swim.py": "",
        "gossip/errors.py": "",
        "gossip/effects.py": "",
        "gossip/serf/q.py": "",
        "gossip/wire/codec.py": "",
        "gossip/tables/replica.py": "",
        "dataplane/model.py": "",
        "sim/world.py": "",
        "bench/cluster.py": "",
        "crypto/k.py": "",
    }
    root = _tree(tmp_path, others | {name: text})
    assert bool(rank_violations(root)) is bad


CYCLE_CASES = {
    "top-level both ways": ({"agent/a.py": "import agent.b\n", "agent/b.py": "import agent.a\n"}, True),
    "one side in a function": (
        {"agent/a.py": "from agent import b\n", "agent/b.py": "def f():\n    from agent.a import x\n"},
        True,
    ),
    "three modules, relative imports": (
        {
            "agent/x/a.py": "from .b import y\n",
            "agent/x/b.py": "from ..c import z\n",
            "agent/c.py": "from agent.x import a\n",
        },
        True,
    ),
    "from pkg import submodule is the submodule": (
        # agent/__init__ imports nothing, so this is no cycle through the package
        {"agent/a.py": "from agent import b\n", "agent/b.py": "import agent\n"},
        False,
    ),
    "TYPE_CHECKING back edge": (
        {
            "agent/a.py": "import agent.b\n",
            "agent/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import agent.a\n",
        },
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(CYCLE_CASES))
def test_cycle_checker(tmp_path: Path, case: str) -> None:
    files, bad = CYCLE_CASES[case]
    root = _tree(tmp_path, files)
    assert bool(cycles(root)) is bad


def test_cycle_is_reported_as_a_path(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {"agent/a.py": "import agent.b\n", "agent/b.py": "import agent.c\n", "agent/c.py": "import agent.a\n"},
    )
    assert cycles(root) == [["agent.a", "agent.b", "agent.c", "agent.a"]]


def test_pure_dataplane_list_is_checked(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"dataplane/model.py": ""})
    assert [m for m in PURE_DATAPLANE if m not in module_files(root)]
