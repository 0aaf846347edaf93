"""edgefleet.edge_runtime: what runs on the device. Never imports torch, compilers or cloud.

`Predictor` is the entry point; backends are loaded on first use from their import strings, so
`import edgefleet.edge_runtime` stays light (tests/edge_runtime/test_no_torch.py checks it).
"""

from edgefleet.edge_runtime.predictor import Predictor, SelfTestReport

__all__ = ["Predictor", "SelfTestReport"]
