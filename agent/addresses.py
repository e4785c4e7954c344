"""Address syntax and normalisation shared by the agent, the transport and ``agentctl``.

Owns: parsing ``IP``, ``IP:PORT``, ``[IPv6]``, ``[IPv6]:PORT``; printing addresses the
same way; and the IPv4-mapped IPv6 <-> plain IPv4 mapping between dual-stack
sockets and the core, which only ever sees plain text addresses. Does not: bind
or resolve anything (numeric addresses only; ``agent.membership.transport`` binds).
"""

from __future__ import annotations

import ipaddress
import socket

Address = tuple[str, int]
DEFAULT_PORT = 7946
"""Gossip port when an address has none (memberlist's and serf's default)."""


class UsageError(ValueError):
    """A flag value that is not acceptable; the message names the flag."""


def parse_address(text: str, default_port: int, *, allow_zero_port: bool = False) -> Address:
    """``IP``, ``IP:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` (a bare IPv6 has no port)."""
    text = text.strip()
    host, port_text, has_port = text, "", False
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"{text!r}: missing ']' after IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"{text!r}: expected ':PORT' after ']'")
            port_text, has_port = rest[1:], True
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        has_port = True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"{text!r} is not an IP address (expected IP, IP:PORT or [IPv6]:PORT)") from None
    if text.startswith("[") and ip.version != 6:
        raise UsageError(f"{text!r}: brackets are only for IPv6 addresses")
    port = default_port
    if has_port:
        if not port_text.isdigit():
            raise UsageError(f"{text!r}: port {port_text!r} is not a number")
        port = int(port_text)
    if not (0 if allow_zero_port else 1) <= port <= 65535:
        raise UsageError(f"{text!r}: port {port} out of range")
    return (str(ip), port)


def format_address(addr: Address) -> str:
    ip, port = addr
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def is_wildcard(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_unspecified


def peer_address(sockaddr: tuple[object, ...]) -> Address:
    """A socket address as the core wants it: plain text IP (no IPv4-mapped form), port."""
    ip, port = str(sockaddr[0]), int(str(sockaddr[1]))
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return (ip, port)


def family_of(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


def sockaddr_for(family: int, addr: Address) -> Address:
    """Destination in the socket's family: IPv4 peers of a dual-stack socket get ::ffff:."""
    ip, port = addr
    if family == socket.AF_INET6 and ":" not in ip:
        return (f"::ffff:{ip}", port)
    return addr


