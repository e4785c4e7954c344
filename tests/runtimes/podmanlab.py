"""The podman harness for tests: ``agent.lab.podman.PodmanHosts`` beside an ``OverlayLab``."""

from __future__ import annotations

from agent.lab.podman import PodmanHosts, skip_reason
from tests.netns.overlaylab import OverlayLab

__all__ = ["PodmanLab", "podman_skip_reason"]

podman_skip_reason = skip_reason


class PodmanLab(PodmanHosts):
    """``PodmanHosts`` for every agent of ``ol`` (``ol`` kept for the tests' kernel reads)."""

    ol: OverlayLab

    @classmethod
    def for_overlay(cls, ol: OverlayLab) -> PodmanLab:
        pl = cls.create(ol.lab, [n.socket for n in ol.nodes])
        assert isinstance(pl, PodmanLab)
        pl.ol = ol
        return pl
