"""plan: desired vs actual -> ordered operations; checked against FakeKernel."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.compile import compile
from dataplane.fake import FakeKernel
from dataplane.model import EndpointSpec, Link, NetworkSpec, OverlayView, State, VxlanConf
from dataplane.naming import owned_kind
from dataplane.plan import (
    CreateLink,
    DeleteLink,
    FdbDel,
    FdbSet,
    FloodAdd,
    FloodDel,
    NeighDel,
    NeighSet,
    Op,
    SetLink,
    missing_ports,
    op_device,
    plan,
)

ME = "198.51.100.1"
VTEPS = ["198.51.100.2", "198.51.100.3", "198.51.100.4"]
BR, VX = "ov-br-100", "ov-vx-100"
VXC = VxlanConf(100, ME, 4789)


def base_state(**kw: object) -> State:
    links = {BR: Link(BR, "bridge", 1450), VX: Link(VX, "vxlan", 1450, BR, True, VXC)}
    return State(links=links, **kw)  # type: ignore[arg-type]


def test_plan_of_equal_states_is_empty() -> None:
    d = base_state(fdb={(VX, "02:00:00:00:00:01"): VTEPS[0]}, flood={(VX, VTEPS[0]): True})
    assert plan(d, d) == []


def test_create_from_nothing_is_bridge_then_vxlan_then_entries() -> None:
    d = base_state(
        ports={"veth1": Link("veth1", "", 1450, BR)},
        fdb={(VX, "02:00:00:00:00:01"): VTEPS[0]},
        flood={(VX, VTEPS[0]): True},
        neigh={(VX, "10.0.0.1"): "02:00:00:00:00:01"},
    )
    a = State(ports={"veth1": Link("veth1", "veth", 1500, None, False)})
    assert plan(d, a) == [
        CreateLink(d.links[BR]),
        CreateLink(d.links[VX]),
        SetLink("veth1", mtu=1450, master=BR, up=True),
        FloodAdd(VX, VTEPS[0]),
        FdbSet(VX, "02:00:00:00:00:01", VTEPS[0]),
        NeighSet(VX, "10.0.0.1", "02:00:00:00:00:01"),
    ]


def test_mac_moving_to_another_vtep_is_one_replace() -> None:
    d = base_state(fdb={(VX, "02:00:00:00:00:01"): VTEPS[1]})
    a = base_state(fdb={(VX, "02:00:00:00:00:01"): VTEPS[0]})
    assert plan(d, a) == [FdbSet(VX, "02:00:00:00:00:01", VTEPS[1])]


def test_mac_moving_between_networks_is_written_before_it_is_deleted() -> None:
    vx2, br2 = "ov-vx-200", "ov-br-200"
    links = {
        **base_state().links,
        br2: Link(br2, "bridge", 1450),
        vx2: Link(vx2, "vxlan", 1450, br2, True, VxlanConf(200, ME, 4789)),
    }
    mac = "02:00:00:00:00:01"
    d = State(links=links, fdb={(vx2, mac): VTEPS[0]}, neigh={(vx2, "10.0.0.1"): mac})
    a = State(links=links, fdb={(VX, mac): VTEPS[0]}, neigh={(VX, "10.0.0.1"): mac})
    assert plan(d, a) == [
        FdbSet(vx2, mac, VTEPS[0]),
        NeighSet(vx2, "10.0.0.1", mac),
        NeighDel(VX, "10.0.0.1"),
        FdbDel(VX, mac, VTEPS[0]),
    ]


def test_changed_vxlan_attributes_recreate_the_device_and_reprogram_its_entries() -> None:
    entries = {"fdb": {(VX, "02:00:00:00:00:01"): VTEPS[0]}, "flood": {(VX, VTEPS[0]): True}}
    d = base_state(**entries)
    a_links = dict(d.links)
    a_links[VX] = replace(d.links[VX], vxlan=VxlanConf(100, "198.51.100.99", 4789))
    a = State(links=a_links, **entries)  # type: ignore[arg-type]
    assert plan(d, a) == [
        DeleteLink(VX),
        CreateLink(d.links[VX]),
        FloodAdd(VX, VTEPS[0]),
        FdbSet(VX, "02:00:00:00:00:01", VTEPS[0]),
    ]


def test_stale_devices_are_deleted_children_first_without_deleting_their_entries() -> None:
    a = base_state(
        fdb={(VX, "02:00:00:00:00:01"): VTEPS[0]}, neigh={(VX, "10.0.0.1"): "02:00:00:00:00:01"}
    )
    assert plan(State(), a) == [DeleteLink(VX), DeleteLink(BR)]


def test_foreign_links_and_their_entries_are_never_touched() -> None:
    foreign = {
        "eth0": Link("eth0", "veth", 1500),
        "opvx0": Link("opvx0", "vxlan", 1450, None, True, VxlanConf(7, ME, 4789)),
        "ov-br-x": Link("ov-br-x", "bridge", 1500),  # our prefix, not our name
    }
    a = State(
        links=foreign,
        fdb={("opvx0", "02:00:00:00:00:09"): VTEPS[2]},
        neigh={("opvx0", "10.9.9.9"): "02:00:00:00:00:09"},
    )
    assert plan(State(), a) == []


def test_deletes_are_guarded_by_the_destination_seen() -> None:
    a = base_state(fdb={(VX, "02:00:00:00:00:01"): VTEPS[2]}, flood={(VX, VTEPS[2]): True})
    assert plan(base_state(), a) == [
        FdbDel(VX, "02:00:00:00:00:01", VTEPS[2]),
        FloodDel(VX, VTEPS[2]),
    ]


def test_missing_ports_are_skipped_and_listed() -> None:
    d = base_state(ports={"veth9": Link("veth9", "", 1450, BR)})
    a = base_state()
    assert plan(d, a) == []
    assert missing_ports(d, a) == ["veth9"]


def test_stale_ports_are_detached_only_if_they_carry_our_prefix() -> None:
    a = base_state(
        ports={
            "ov-h-old": Link("ov-h-old", "veth", 1450, BR),
            "tap0": Link("tap0", "tun", 1450, BR),
        }
    )
    assert plan(base_state(), a) == [SetLink("ov-h-old", detach=True)]


# -- property: applying the plan to a FakeKernel yields the desired state -------------------

NETS = (
    NetworkSpec("a", 100, subnets=("10.0.0.0/24",)),
    NetworkSpec("b", 200, subnets=("10.0.0.0/24",)),
    NetworkSpec("c", 300, subnets=("10.1.0.0/24",)),
)
MACS = [f"02:42:0a:00:00:{i:02x}" for i in range(2, 10)]
IPS = [f"10.0.0.{i}" for i in range(2, 10)]


@st.composite
def views(draw: st.DrawFn) -> OverlayView:
    rows = []
    for i in range(draw(st.integers(0, 10))):
        net = draw(st.sampled_from(NETS))
        local = draw(st.booleans())
        rows.append(
            EndpointSpec(
                net.id,
                f"e{i}",
                draw(st.sampled_from(MACS)),
                draw(st.sampled_from([*IPS, None])),
                draw(st.sampled_from([None, "fd00::1", "fd00::2"])),
                "me" if local else draw(st.sampled_from(["h2", "h3", "h4"])),
                ME if local else draw(st.sampled_from(VTEPS)),
                local,
                draw(st.sampled_from([None, "veth1", "veth2", "ov-h-1"])) if local else None,
                draw(st.integers(0, 3)),
            )
        )
    alive = {h: draw(st.booleans()) for h in ("h2", "h3", "h4")}
    return OverlayView(NETS, tuple(rows), ME, owner_alive=alive)


LINK_CHANGES = ("absent", "same", "mtu", "down", "master", "vxlan", "kind")


@st.composite
def kernels(draw: st.DrawFn, desired: State) -> FakeKernel:
    k = FakeKernel()
    links: dict[str, Link] = {
        "eth0": Link("eth0", "veth", 1500),
        "opbr0": Link("opbr0", "bridge", 1500),
        "opvx0": Link("opvx0", "vxlan", 1500, "opbr0", True, VxlanConf(999, ME, 4789)),
    }
    for name, want in desired.links.items():
        change = draw(st.sampled_from(LINK_CHANGES))
        if change == "absent":
            continue
        have = want
        if change == "mtu":
            have = replace(want, mtu=1500)
        elif change == "down":
            have = replace(want, up=False)
        elif change == "master" and want.master:
            have = replace(want, master=None)
        elif change == "vxlan" and want.vxlan:
            have = replace(want, vxlan=replace(want.vxlan, local="198.51.100.77"))
        elif change == "kind":
            have = Link(name, "dummy", want.mtu)
        links[name] = have
    for link in list(links.values()):  # a master that is not a bridge cannot hold ports
        if link.master and links.get(link.master, Link("", "", 0)).kind != "bridge":
            links[link.name] = replace(link, master=None)
    if draw(st.booleans()):  # a stale network of ours
        links["ov-br-400"] = Link("ov-br-400", "bridge", 1450)
        links["ov-vx-400"] = Link(
            "ov-vx-400", "vxlan", 1450, "ov-br-400", True, VxlanConf(400, ME, 4789)
        )
    bridges = [n for n, lk in links.items() if lk.kind == "bridge"]
    for name in ("veth1", "veth2", "ov-h-1", "ov-h-stale", "tap0"):
        if draw(st.booleans()):
            master = draw(st.sampled_from([None, *bridges]))
            links[name] = Link(
                name, "veth", draw(st.sampled_from([1450, 1500])), master, draw(st.booleans())
            )
    fdb = {("opvx0", "02:00:00:00:00:99"): VTEPS[0]}
    flood = {("opvx0", VTEPS[0]): True}
    neigh = {("opvx0", "10.0.0.2"): "02:00:00:00:00:99"}
    vxlans = [n for n, lk in links.items() if lk.kind == "vxlan" and owned_kind(n, "ov-")]
    for key, dst in desired.fdb.items():
        if key[0] in vxlans and draw(st.booleans()):
            fdb[key] = draw(st.sampled_from([dst, *VTEPS]))
    for key in desired.flood:
        if key[0] in vxlans and draw(st.booleans()):
            flood[key] = True
    for key, mac in desired.neigh.items():
        if key[0] in vxlans and draw(st.booleans()):
            neigh[key] = draw(st.sampled_from([mac, *MACS]))
    for dev in vxlans:  # stale entries
        for _ in range(draw(st.integers(0, 2))):
            fdb[(dev, draw(st.sampled_from(MACS)))] = draw(st.sampled_from(VTEPS))
            flood[(dev, draw(st.sampled_from(VTEPS)))] = True
            neigh[(dev, draw(st.sampled_from(IPS)))] = draw(st.sampled_from(MACS))
    k.load(State(links, {}, fdb, flood, neigh))
    return k


def check_order(ops: list[Op]) -> None:
    created: dict[str, int] = {}
    deleted: dict[str, int] = {}
    first_delete_entry = min(
        (i for i, op in enumerate(ops) if isinstance(op, FdbDel | FloodDel | NeighDel)),
        default=len(ops),
    )
    for i, op in enumerate(ops):
        if isinstance(op, CreateLink):
            created[op.link.name] = i
            if op.link.master is not None and op.link.master in deleted:
                assert op.link.master in created  # parent re-created before the child
        elif isinstance(op, DeleteLink):
            deleted[op.name] = i
        if isinstance(op, FdbSet | FloodAdd | NeighSet):
            assert i < first_delete_entry  # make before break
        if not isinstance(op, DeleteLink | CreateLink):
            dev = op_device(op)
            if dev in deleted:
                assert dev in created and created[dev] > deleted[dev]
    for name, i in deleted.items():  # children (vxlan) deleted before parents (bridge)
        if name.startswith("ov-br-"):
            vx = "ov-vx-" + name[len("ov-br-") :]
            if vx in deleted and vx not in created:
                assert deleted[vx] < i


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_applying_the_plan_to_a_fake_kernel_yields_the_desired_state(data: st.DataObject) -> None:
    desired = compile(data.draw(views()))
    kernel = data.draw(kernels(desired))
    before = kernel.snapshot()
    actual = kernel.read(desired)
    ops = plan(desired, actual)
    check_order(ops)
    result = kernel.apply(ops)
    assert result.ok, result.errors
    after = kernel.read(desired)
    assert after.links == desired.links
    assert (after.fdb, after.flood, after.neigh) == (desired.fdb, desired.flood, desired.neigh)
    for name, want in desired.ports.items():
        if name in actual.ports:
            have = after.ports[name]
            assert (have.master, have.mtu, have.up) == (want.master, want.mtu, want.up)
        else:
            assert name not in after.ports
    snap = kernel.snapshot()
    for name, link in before.links.items():
        if owned_kind(name, "ov-") or name in desired.ports:
            continue
        now = snap.links[name]
        if name.startswith("ov-") and link.master is not None and owned_kind(link.master, "ov-"):
            assert now.master is None  # a stale port of ours: detached
        elif (
            link.master is not None
            and owned_kind(link.master, "ov-")
            and link.master not in after.links
        ):
            assert now == replace(link, master=None)  # its bridge was deleted under it
        elif link.master is not None and link.master in ops_recreated(ops):
            assert now == replace(link, master=None)
        else:
            assert now == link
    for table in ("fdb", "flood", "neigh"):
        foreign_before = {
            k: v for k, v in getattr(before, table).items() if not owned_kind(k[0], "ov-")
        }
        foreign_after = {
            k: v for k, v in getattr(snap, table).items() if not owned_kind(k[0], "ov-")
        }
        assert foreign_before == foreign_after
    assert plan(desired, after) == []


def ops_recreated(ops: list[Op]) -> set[str]:
    return {op.name for op in ops if isinstance(op, DeleteLink)} & {
        op.link.name for op in ops if isinstance(op, CreateLink)
    }


@settings(max_examples=100, deadline=None)
@given(views())
def test_plan_of_a_compiled_state_against_itself_is_empty(view: OverlayView) -> None:
    d = compile(view)
    assert plan(d, d) == []


_KEYS = st.tuples(st.sampled_from([VX, "ov-vx-200"]), st.sampled_from(MACS))
_IPKEYS = st.tuples(st.sampled_from([VX, "ov-vx-200"]), st.sampled_from(IPS))
_FLOODKEYS = st.tuples(st.sampled_from([VX, "ov-vx-200"]), st.sampled_from(VTEPS))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(_KEYS, st.sampled_from(VTEPS)),
    st.dictionaries(_KEYS, st.sampled_from(VTEPS)),
    st.dictionaries(_FLOODKEYS, st.just(True)),
    st.dictionaries(_FLOODKEYS, st.just(True)),
    st.dictionaries(_IPKEYS, st.sampled_from(MACS)),
    st.dictionaries(_IPKEYS, st.sampled_from(MACS)),
)
def test_entry_ops_are_the_row_by_row_diff_in_table_order(
    fdb_d: dict[tuple[str, str], str],
    fdb_a: dict[tuple[str, str], str],
    flood_d: dict[tuple[str, str], bool],
    flood_a: dict[tuple[str, str], bool],
    neigh_d: dict[tuple[str, str], str],
    neigh_a: dict[tuple[str, str], str],
) -> None:
    """The entry operations (built by C loops in plan) are the plain row-by-row diff,
    in the order of the tables: sets (flood, FDB, neighbours), then deletes
    (neighbours, FDB, flood)."""
    vx2 = Link("ov-vx-200", "vxlan", 1450, None, True, VxlanConf(200, ME, 4789))
    links = {**base_state().links, "ov-vx-200": vx2}
    desired = State(links, {}, fdb_d, flood_d, neigh_d)
    actual = State(links, {}, fdb_a, flood_a, neigh_a)
    want: list[Op] = [FloodAdd(d, v) for (d, v) in flood_d if (d, v) not in flood_a]
    want += [FdbSet(d, m, v) for (d, m), v in fdb_d.items() if fdb_a.get((d, m)) != v]
    want += [NeighSet(d, i, m) for (d, i), m in neigh_d.items() if neigh_a.get((d, i)) != m]
    want += [NeighDel(d, i) for (d, i) in neigh_a if (d, i) not in neigh_d]
    want += [FdbDel(d, m, v) for (d, m), v in fdb_a.items() if (d, m) not in fdb_d]
    want += [FloodDel(d, v) for (d, v) in flood_a if (d, v) not in flood_d]
    got = plan(desired, actual)
    assert got == want
    assert [type(op) for op in got] == [type(op) for op in want]
