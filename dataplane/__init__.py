"""Dataplane: cluster view -> kernel state, kept level-triggered by one generic reconciler.

VXLAN, bridges, FDB rows and neighbours (this package's top level): compile
(model.OverlayView -> model.State) -> plan (desired, actual -> ops) ->
kernel.LinuxKernel / fake.FakeKernel (read, apply), bound by target.VxlanTarget.
IPsec SAs and policies: the same steps in ``dataplane.xfrm``, bound by
xfrm.target.XfrmTarget. reconciler.Reconciler is the trio task that runs either.
See docs/dataplane.md and docs/ipsec.md.
"""
