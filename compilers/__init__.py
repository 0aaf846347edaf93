"""edgefleet.compilers: from a training framework or a model file to bundle artifacts, each checked against
the source.

    from edgefleet.compilers import export_torch, import_model

`export_torch` is loaded on first use (it imports torch); importing a model file does not need torch.
"""

from typing import Any

from edgefleet.compilers.import_model import import_model  # the function; the module stays in sys.modules

__all__ = ["export_torch", "import_model"]


def __getattr__(name: str) -> Any:
    if name == "export_torch":
        from edgefleet.compilers.export import export_torch

        return export_torch
    raise AttributeError(f"module 'edgefleet.compilers' has no attribute {name!r}")
