"""Ready-made ``OverlayView`` values for tests, the benchmark and demos.

Owns: deterministic view builders (no randomness, no I/O). Addresses are from
documentation ranges (192.0.2.0/24, 198.51.100.0/24 underlay; 10.x overlay) and
MACs are Docker-style ``02:42:<IPv4 bytes>``.
"""

from __future__ import annotations

import ipaddress

from dataplane.model import EndpointSpec, NetworkSpec, OverlayView


def docker_mac(ipv4: str) -> str:
    """02:42 followed by the four bytes of the IPv4 address (Docker's scheme)."""
    raw = ipaddress.IPv4Address(ipv4.split("/")[0]).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in raw)


def endpoint(
    network: NetworkSpec,
    host: int,
    index: int,
    vtep: str,
    *,
    local: bool = False,
    ifname: str | None = None,
    ipv6: bool = False,
) -> EndpointSpec:
    """Endpoint ``index`` of host ``host`` on ``network`` (address from the first subnet)."""
    net = ipaddress.IPv4Network(network.subnets[0])
    ip = (
        str(net.network_address + 2 + host * 256 + index)
        if net.num_addresses > 4096
        else str(net.network_address + 2 + host * 16 + index)
    )
    v6 = f"fd00:{network.vni:x}::{host:x}:{index:x}" if ipv6 else None
    return EndpointSpec(
        network_id=network.id,
        id=f"{network.id}-h{host}-e{index}",
        mac=docker_mac(ip),
        ipv4=ip,
        ipv6=v6,
        owner=f"host{host}",
        vtep=vtep,
        local=local,
        ifname_host=ifname,
    )


def bulk_view(
    endpoints: int,
    vteps: int,
    *,
    local_vtep: str = "198.51.100.1",
    vni: int = 4242,
    prefix: str = "ov-",
) -> OverlayView:
    """One network, one local endpoint (no port), ``endpoints`` remote ones over ``vteps``
    remote hosts: ``endpoints`` unicast FDB rows, ``endpoints`` neighbours and ``vteps``
    flood rows. Remote VTEPs are 198.51.100.2 upward, then 192.0.2.x."""
    net = NetworkSpec("bulk", vni, subnets=("10.64.0.0/10",))
    base = ipaddress.IPv4Address("10.64.0.0")
    hosts = [_vtep(i) for i in range(vteps)]
    rows = [
        EndpointSpec(
            "bulk", "local", "02:42:0a:40:00:01", "10.64.0.1", None, "me", local_vtep, local=True
        )
    ]
    for i in range(endpoints):
        ip = str(base + 16 + i)
        h = i % vteps
        rows.append(EndpointSpec("bulk", f"e{i}", docker_mac(ip), ip, None, f"host{h}", hosts[h]))
    alive = {f"host{h}": True for h in range(vteps)}
    return OverlayView((net,), tuple(rows), local_vtep, owner_alive=alive, prefix=prefix)


def _vtep(i: int) -> str:
    if i < 250:
        return f"198.51.100.{i + 2}"
    if i < 500:
        return f"192.0.2.{i - 248}"
    raise ValueError("bulk_view supports at most 500 VTEPs")
