"""Prometheus endpoint: scraped over HTTP from a running agent; off by default; lazy import."""

from __future__ import annotations

import subprocess
import sys

import trio
from prometheus_client.parser import text_string_to_metric_families

from agent.runtime import MetricFamily
from tests.agent.conftest import query, start_agent, statuses, wait_until


async def http_get(host: str, port: int, request: bytes) -> tuple[str, bytes]:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request)
        buf = bytearray()
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                buf += chunk
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_scrape(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a", metrics_address=("127.0.0.1", 0))
        await start_agent(nursery, sockdir, "b", join=(a.addr,))

        async def pair() -> bool:
            return await statuses(a.socket) == {"a": "alive", "b": "alive"}

        await wait_until(pair, "a and b to see each other")
        host, port = (await query(a.socket, "status"))["metrics"].rsplit(":", 1)

        async def probed() -> bool:
            _, body = await http_get(host, int(port), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            return samples(body.decode()).get(("overlay_gossip_probes_total", ()), 0) > 0

        await wait_until(probed, "a to probe b")
        line, body = await http_get(host, int(port), b"GET /metrics HTTP/1.0\r\n\r\n")
        assert line == "HTTP/1.0 200 OK"
        got = samples(body.decode())
        assert got[("overlay_members", (("status", "alive"),))] == 2
        assert got[("overlay_members", (("status", "dead"),))] == 0
        assert got[("overlay_gossip_messages_total", (("direction", "in"), ("transport", "udp")))] > 0
        assert got[("overlay_gossip_bytes_total", (("direction", "out"),))] > 0
        assert got[("overlay_gossip_decode_errors_total", ())] == 0
        assert got[("overlay_agent_ready", ())] == 1
        assert ("overlay_gossip_probe_rtt_seconds", ()) in got
        assert got[("process_resident_memory_bytes", ())] > 0
        assert got[("overlay_member_events_total", (("type", "member-joined"),))] >= 1
        # Anything else: a short error, and the agent serves on.
        assert (await http_get(host, int(port), b"GET /nope HTTP/1.0\r\n\r\n"))[0].startswith("HTTP/1.0 404")
        assert (await http_get(host, int(port), b"POST /metrics HTTP/1.0\r\n\r\n"))[0].startswith("HTTP/1.0 405")
        assert (await http_get(host, int(port), b"garbage\r\n\r\n"))[0].startswith("HTTP/1.0 400")
        assert (await http_get(host, int(port), b"G" * 10000))[0].startswith("HTTP/1.0 431")
        assert len(await query(a.socket, "members")) == 2
        nursery.cancel_scope.cancel()


async def test_metric_sources_plug_in_and_cannot_break_scrapes(sockdir: str) -> None:
    """The hook later layers use (table rows, reconcile duration)."""
    from agent import service
    from agent.cli import AgentOptions
    from agent.control.server import ControlServer
    from agent.runtime import Runtime

    class Tables:
        def setup(self, rt: Runtime, server: ControlServer) -> None:
            rt.metric_sources.append(lambda: [MetricFamily(
                "overlay_table_rows", "gauge", "Rows per table", [({"table": "endpoints"}, 7.0)])])
            rt.metric_sources.append(lambda: 1 / 0)  # type: ignore[arg-type, return-value]

        async def run(self, rt: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()

    opts = AgentOptions(node="t", bind=("127.0.0.1", 0), control_socket=f"{sockdir}/t.sock",
                        metrics_address=("127.0.0.1", 0))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: service.run(opts, handle_signals=False, extensions=[Tables()],
                                                            task_status=task_status))
        host, port = (await query(opts.control_socket, "status"))["metrics"].rsplit(":", 1)
        line, body = await http_get(host, int(port), b"GET /metrics HTTP/1.0\r\n\r\n")
        assert line == "HTTP/1.0 200 OK"
        got = samples(body.decode())
        assert got[("overlay_table_rows", (("table", "endpoints"),))] == 7
        assert got[("overlay_members", (("status", "alive"),))] == 1
        nursery.cancel_scope.cancel()


def test_prometheus_client_is_imported_only_with_metrics_on() -> None:
    code = ("import sys, agent.__main__, agent.service, agent.control.ops; "
            "assert 'prometheus_client' not in sys.modules and 'agent.metrics' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
