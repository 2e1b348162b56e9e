"""The edge agent: converges a node on the control plane's target, one atomic release at a time."""

from edgesync import __version__

__all__ = ["__version__"]
