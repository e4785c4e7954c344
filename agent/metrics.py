"""Prometheus metrics: what the agent exposes and a small HTTP endpoint on the event loop.

Owns: the names of the core's metrics (``overlay_*``: membership, gossip traffic,
agent health), the bridge from ``agent.runtime.MetricFamily`` values (the core's
and those that other layers return from ``Runtime.metric_sources``: table rows,
reconcile duration/errors, programmed entries, IPsec) to prometheus_client, and
``serve``: an HTTP/1.0 server task
answering ``GET /metrics``. Values are read at scrape time from the driver's
counters and the core's stats, inside the event loop, so a scrape sees one
consistent state and costs nothing between scrapes; a wedged loop also stops
answering scrapes, which is what an alert should see.
prometheus_client (~11 MiB of RSS) is imported only when metrics are on.
Does not: bind the listening socket (``agent.service`` does, so errors are start-up
errors), define the value type other layers return (``agent.runtime``, so that a
layer never needs this module or prometheus_client) or decide what a healthy value is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

import trio

from agent import __version__
from agent.log import kv
from agent.runtime import MetricFamily, MetricSource, Runtime
from gossip.members import Status

log = logging.getLogger("agent.metrics")

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 16


def core_families(rt: Runtime) -> list[MetricFamily]:
    """Membership, gossip traffic and agent health."""
    d = rt.driver
    c = d.counters
    swim = d.swim
    st = swim.stats
    counts = {s.label: 0 for s in Status}
    for m in swim.members():
        counts[m.status.label] += 1
    g: Literal["gauge"] = "gauge"
    n: Literal["counter"] = "counter"
    families = [
        MetricFamily("overlay_members", g, "Members known to this agent, by status (itself included)",
                     [({"status": s}, float(v)) for s, v in counts.items()]),
        MetricFamily("overlay_member_events", n, "Member events seen, by type",
                     [({"type": t}, float(v)) for t, v in sorted(c.member_events.items())]),
        MetricFamily.single("overlay_gossip_probes", n, "Probes started", st.probes),
        MetricFamily.single("overlay_gossip_probe_failures", n, "Probes that got no ack", st.failed_probes),
        MetricFamily.single("overlay_gossip_probe_failures_unreachable", n,
                            "Probes failed at once by an ICMP port unreachable", st.unreachable_probes),
        MetricFamily.single("overlay_gossip_unreachable", n,
                            "ICMP port-unreachable answers to our datagrams", c.unreachable_in),
        MetricFamily.single("overlay_gossip_indirect_probes", n, "Indirect probes sent", st.indirect_probes),
        MetricFamily.single("overlay_gossip_suspicions", n, "Members this node suspected", st.suspicions),
        MetricFamily.single("overlay_gossip_refutations", n, "Suspicions of this node refuted", st.refutes),
        MetricFamily.single("overlay_gossip_deaths", n, "Members declared dead", st.deaths),
        MetricFamily.single("overlay_gossip_push_pulls", n, "Push/pull state exchanges", st.push_pulls),
        MetricFamily.single("overlay_gossip_health_score", g,
                            "Lifeguard local health (0 = healthy; probe timing is stretched by it)",
                            swim.awareness),
        MetricFamily("overlay_gossip_messages", n, "Gossip messages by direction and transport", [
            ({"direction": "in", "transport": "udp"}, float(c.datagrams_in)),
            ({"direction": "out", "transport": "udp"}, float(c.datagrams_out)),
            ({"direction": "in", "transport": "tcp"}, float(c.streams_in)),
            ({"direction": "out", "transport": "tcp"}, float(c.streams_out)),
        ]),
        MetricFamily("overlay_gossip_bytes", n, "UDP gossip bytes by direction", [
            ({"direction": "in"}, float(c.bytes_in)), ({"direction": "out"}, float(c.bytes_out)),
        ]),
        MetricFamily.single("overlay_gossip_decode_errors", n,
                            "Packets and streams that could not be decoded (bad key, garbage)", c.decode_errors),
        MetricFamily.single("overlay_gossip_send_errors", n, "UDP sends that failed", c.send_errors),
        MetricFamily.single("overlay_gossip_datagrams_dropped", n,
                            "Datagrams dropped because the inbox was full", c.datagrams_dropped),
        MetricFamily.single("overlay_gossip_stream_failures", n, "Outbound TCP exchanges that failed",
                            c.stream_failures),
        MetricFamily.single("overlay_agent_internal_errors", n, "Bugs caught and survived (see the log)",
                            c.internal_errors),
        MetricFamily.single("overlay_agent_ready", g, "1 once the agent is ready (sd_notify READY=1)",
                            1.0 if rt.readiness.ready else 0.0),
        MetricFamily.single("overlay_agent_warnings", g, "Warnings shown by agentctl status",
                            len(rt.warnings())),
        MetricFamily.single("overlay_agent_state_write_errors", n, "Failed writes of the state dir",
                            rt.persister.errors),
        MetricFamily.single("overlay_gossip_keyring_keys", g, "Keys in the gossip keyring",
                            len(swim.keyring.keys) if swim.keyring is not None else 0),
        MetricFamily("overlay_agent_info", g, "Constant 1, labelled with the version and node", [
            ({"version": __version__, "node": swim.name, "node_id": rt.node_id},
             1.0),
        ]),
    ]
    if st.last_rtt is not None:
        families.append(MetricFamily.single(
            "overlay_gossip_probe_rtt_seconds", g, "Round-trip time of the last acknowledged probe",
            st.last_rtt))
    return families


class Exporter:
    """prometheus_client registry over our families (+ the process collector)."""

    def __init__(self, rt: Runtime) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self._gauge = GaugeMetricFamily
        self._counter = CounterMetricFamily
        self.rt = rt
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)  # RSS, CPU, fds, start time
        self.registry.register(self)  # type: ignore[arg-type]
        self.source_errors = 0

    def collect(self) -> Iterable[Any]:
        sources: list[MetricSource] = [lambda: core_families(self.rt), *self.rt.metric_sources]
        for source in sources:
            try:
                families = list(source())
            except Exception:
                # A broken plug-in must not take the core metrics down with it.
                self.source_errors += 1
                log.exception(kv("metrics-source-failed"))
                continue
            for fam in families:
                labels = sorted({k for lbl, _ in fam.samples for k in lbl})
                cls = self._counter if fam.kind == "counter" else self._gauge
                out = cls(fam.name, fam.help, labels=labels)
                for lbl, value in fam.samples:
                    out.add_metric([lbl.get(k, "") for k in labels], value)
                yield out

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


async def _read_request(stream: trio.SocketStream) -> bytes | None:
    buf = bytearray()
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        if len(buf) > MAX_REQUEST:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _answer(request: bytes | None, exporter: Exporter) -> bytes:
    if request is None:
        return _response("431 Request Header Fields Too Large", b"request too large\n")
    parts = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
    if len(parts) < 2:
        return _response("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response("405 Method Not Allowed", b"only GET\n")
    if target == b"/metrics":
        body, content_type = exporter.render()
        reply = _response("200 OK", body, content_type)
    elif target == b"/":
        reply = _response("200 OK", b"overlay-agent metrics: /metrics\n")
    else:
        return _response("404 Not Found", b"not found; try /metrics\n")
    if method == b"HEAD":
        return reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    return reply


async def serve(rt: Runtime, sock: trio.socket.SocketType,
                *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer scrapes on a bound, listening socket forever."""
    exporter = Exporter(rt)
    listener = trio.SocketListener(sock)
    active = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal active
        try:
            async with stream:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    request = await _read_request(stream)
                    await stream.send_all(_answer(request, exporter))
        except (trio.BrokenResourceError, OSError):
            pass
        finally:
            active -= 1

    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                log.warning(kv("metrics-accept-error", errno=exc.errno))
                await trio.sleep(0.1)
                continue
            if active >= MAX_CONNECTIONS:
                await stream.aclose()
                continue
            active += 1
            nursery.start_soon(handle, stream)
