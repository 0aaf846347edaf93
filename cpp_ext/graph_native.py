"""Loads an edgefleet graph into the C++ executor: `load_executor(graph).run({name: array})`.

The executor (edgefleet.cpp_ext._native.GraphExecutor) holds the constants (pre-packed where an op
wants: Gemm's B as (K, N), Conv's W as column panels of (C*kH*kW, up to 48) for the direct kernel,
QConv/QGemm weights as int16 rows with their zero point removed, and for a group-1 QConv also as int8
(tap, channel, 4) blocks for the direct uint8 x int8 kernel) and one plan per input shape, so `run` is
one native call. Kernel ISA: `isa()` tells which one runs ("avx512", "avxvnni", "avx2", "neon" on
aarch64, or "portable"), `select_isa(name)` picks one for the whole process, as does the environment
variable EDGEFLEET_NATIVE_ISA=portable (or =avx2, =neon...) at import.
"""

from __future__ import annotations

import numpy as np

from edgefleet.cpp_ext import _native
from edgefleet.cpp_ext.graph_format import Graph
from edgefleet.cpp_ext.graph_ops import infer_dtypes

GraphExecutor = _native.GraphExecutor


def load_executor(graph: Graph, threads: int = 1) -> GraphExecutor:
    """The C++ executor for graph. GraphFormatError (unsupported op or dtype) or ValueError (an attribute
    or constant the C++ op refuses) name the node. threads: kernel threads counting the caller's (1: none
    started; bit-identical results at any count)."""
    dtypes = infer_dtypes(graph)
    ids = {name: i for i, name in enumerate(dtypes)}
    nodes = [(n.op, n.name, [ids[v] if v else -1 for v in n.inputs], ids[n.outputs[0]], dict(n.attrs))
             for n in graph.nodes]
    constants = {ids[name]: np.array(array, order="C") for name, array in graph.constants.items()}
    return GraphExecutor([(name, dtype) for name, dtype in dtypes.items()], [ids[i.name] for i in graph.inputs],
                         [ids[o.name] for o in graph.outputs], constants, nodes, threads)


def isa() -> str:
    """The ISA of the kernels in use: an x86-64 tier ("avx512", "avxvnni", "avx2"), "neon" (aarch64) or "portable"."""
    return _native.graph_isa()


def select_isa(name: str) -> str:
    """"auto" or one of available_isas() for every executor in the process; returns the ISA now in use."""
    return _native.graph_select_isa(name)


def peak_gflops(isa_name: str | None = None, seconds: float = 0.2) -> float:
    """One core's measured fp32 peak (GFLOP/s) for an ISA (default: the one in use): the roofline's ceiling."""
    return _native.graph_peak_gflops(isa_name or isa(), seconds)


def available_isas() -> list[str]:
    return _native.graph_available_isas().split(",")
