"""The host side of overlay networks: the anycast gateway on each bridge (addresses and
MAC), egress (masquerade) and isolation rules in our nftables tables, and IP forwarding.

Split like the VXLAN and XFRM sides: ``model`` (values), ``rules`` (the ruleset as nft
text and as read back from ``nft -j``), ``compile`` (view -> desired), ``plan`` (diff ->
ops), ``kernel`` (pyroute2 for addresses, the ``nft`` tool for rules, /proc/sys),
``monitor`` (address, link and nftables notifications) and ``target`` (the reconciler's
third target). docs/dataplane.md, "Gateway, egress and host access".
"""
