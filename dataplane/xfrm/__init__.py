"""XFRM: the IPsec SAs and policies of encrypted overlays, split like the VXLAN side.

model (values) -> compile (per-peer SAs from crypto/ipsec.py -> desired states and
policies) -> plan (desired vs read-back -> netlink requests, make-before-break) ->
kernel (the NETLINK_XFRM socket: batched apply, dumps); codec packs and parses the
kernel's structs, probe says what a kernel lacks, and target binds compile, read,
plan and apply for ``dataplane.reconciler.Reconciler``, the task VXLAN runs too.
model, codec, compile and plan are pure. This package imports none of its modules,
so importing a pure one never loads the socket code. See docs/ipsec.md.
"""
