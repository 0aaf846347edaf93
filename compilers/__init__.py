"""edgefleet.compilers: from a training framework to bundle artifacts, each checked against the source.

    from edgefleet.compilers import export_torch
"""

from edgefleet.compilers.export import export_torch

__all__ = ["export_torch"]
