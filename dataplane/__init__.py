"""Dataplane: cluster view -> kernel VXLAN/bridge/FDB/neighbour state, kept level-triggered.

compile (model.OverlayView -> model.State) -> plan (desired, actual -> ops) ->
kernel.LinuxKernel / fake.FakeKernel (read, apply); reconciler.Reconciler is the
trio task that runs it. See docs/dataplane.md.
"""
