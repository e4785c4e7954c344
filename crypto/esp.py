"""ESP's size on the wire around a VXLAN packet: the overlay MTU an encrypted network can use.

Owns: the ESP constants (transport mode, AES-GCM-128 as RFC 4106, 128-bit ICV) and the
arithmetic of the largest inner MTU whose VXLAN-in-ESP packet fits the underlay MTU.
Does not: derive keys or SPIs (``crypto.ipsec``), program anything (``dataplane``).
Kept apart from ``crypto.ipsec`` so that the dataplane's compile step (which needs the
MTU for every encrypted network) imports a few integers, not hashing.
"""

from __future__ import annotations

ICV_BITS = 128
ESP_HEADER = 8
"""SPI + sequence number."""
ESP_IV = 8
ESP_ICV = ICV_BITS // 8
ESP_TRAILER = 2
"""Pad length + next header, after padding to ``ESP_ALIGN``."""
ESP_ALIGN = 4
ESP_OVERHEAD_MAX = ESP_HEADER + ESP_IV + ESP_ICV + ESP_TRAILER + ESP_ALIGN - 1  # 37
VXLAN_ENCAP = 8 + 8 + 14
"""UDP + VXLAN + inner Ethernet header."""


def encrypted_mtu(underlay_mtu: int, ipv6_underlay: bool = False) -> int:
    """Largest overlay MTU whose VXLAN-in-ESP packets fit the underlay MTU (may be below
    any usable MTU for a tiny underlay: callers check).

    outer = IP + ESP header + IV + pad4(UDP + VXLAN + Ethernet + inner + trailer) + ICV.
    1500 over IPv4 gives 1416 (plain VXLAN: 1450), over IPv6 1396 (plain: 1430).
    """
    ip_header = 40 if ipv6_underlay else 20
    room = underlay_mtu - ip_header - ESP_HEADER - ESP_IV - ESP_ICV
    return (room // ESP_ALIGN) * ESP_ALIGN - VXLAN_ENCAP - ESP_TRAILER
