"""The native backend's model file: an "edgefleet-graph" (.efg), readable with numpy and json only.

A device loads it without onnx or torch. The compiler (compilers/targets/native.py) writes it from ONNX;
tests build graphs directly with `GraphBuilder`. The semantics of every op are those of
`edgefleet.cpp_ext.graph_reference` (the numpy spec); the op table is `edgefleet.cpp_ext.graph_ops`.

File layout (all integers little-endian):

    offset 0   magic   b"EFGRAPH\\0"                      8 bytes
    offset 8   version uint32 (FORMAT_VERSION)
    offset 12  header_size uint32: N, the JSON header's size in bytes
    offset 16  header: N bytes of UTF-8 JSON (below)
    then zero padding up to the next multiple of 64: the data section starts there
    data       each constant's raw bytes, C order, native little-endian, at its `offset` (relative to
               the data section, a multiple of ALIGN = 64) for `nbytes` bytes

Header JSON:

    {"inputs":  [{"name": str, "dtype": str, "shape": [int | str, ...]}],   str dims are symbolic (batch)
     "outputs": [{"name": str, "dtype": str, "shape": [...]}],
     "constants": [{"name": str, "dtype": str, "shape": [int, ...], "offset": int, "nbytes": int}],
     "nodes": [{"op": str, "name": str, "inputs": [str], "outputs": [str], "attrs": {str: value}}],
     "metadata": {str: any}}

dtypes: "float32", "int8", "uint8", "int32", "int64". An empty string in a node's inputs is an absent
optional input (as in ONNX). Attribute values are int, float, str, or lists of int or float. Nodes are
in execution order (topologically sorted); every value is produced once (a graph input, a constant or
one node's output). `read_graph` checks all of this and raises GraphFormatError naming what is wrong.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"EFGRAPH\0"
FORMAT_VERSION = 1
ALIGN = 64
DTYPES = ("float32", "int8", "uint8", "int32", "int64")
_PREFIX = struct.Struct("<8sII")
MAX_HEADER = 64 << 20

AttrValue = int | float | str | list[int] | list[float]


class GraphFormatError(ValueError):
    """A graph file or graph that breaks the format's rules (the message says which)."""


@dataclass(frozen=True)
class ValueInfo:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # str: a symbolic dimension (any size)


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, AttrValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Graph:
    inputs: tuple[ValueInfo, ...]
    outputs: tuple[ValueInfo, ...]
    constants: dict[str, np.ndarray]
    nodes: tuple[Node, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def ops(self) -> list[str]:
        """The distinct op types, sorted."""
        return sorted({n.op for n in self.nodes})


class GraphBuilder:
    """Builds a Graph by hand (tests, small tools):

        b = GraphBuilder()
        x = b.input("x", "float32", ("batch", 4))
        w = b.constant("w", np.ones((4, 3), np.float32))
        y = b.node("MatMul", [x, w])
        b.output(b.node("Relu", [y], name="relu"), "float32")
        graph = b.build()
    """

    def __init__(self) -> None:
        self._inputs: list[ValueInfo] = []
        self._outputs: list[ValueInfo] = []
        self._constants: dict[str, np.ndarray] = {}
        self._nodes: list[Node] = []

    def input(self, name: str, dtype: str, shape: tuple[int | str, ...]) -> str:
        self._inputs.append(ValueInfo(name, dtype, tuple(shape)))
        return name

    def constant(self, name: str, value: np.ndarray | float | int, dtype: str | None = None) -> str:
        array = np.asarray(value, dtype=dtype)
        self._constants[name] = np.array(array, order="C")
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, name: str | None = None,
             **attrs: AttrValue) -> str:
        """Adds a node; returns its (first) output's name. outputs: a count (names made up) or names."""
        index = len(self._nodes)
        names = [f"{op.lower()}_{index}_{i}" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self._nodes.append(Node(op, name or f"{op.lower()}_{index}", tuple(inputs), tuple(names), dict(attrs)))
        return names[0]

    def output(self, name: str, dtype: str = "float32", shape: tuple[int | str, ...] = ()) -> str:
        self._outputs.append(ValueInfo(name, dtype, tuple(shape)))
        return name

    def build(self, metadata: dict[str, Any] | None = None) -> Graph:
        graph = Graph(tuple(self._inputs), tuple(self._outputs), dict(self._constants), tuple(self._nodes),
                      dict(metadata or {}))
        check_structure(graph)
        return graph


def check_structure(graph: Graph) -> None:
    """Every value produced once and before use, dtypes known, outputs produced; GraphFormatError if not."""
    produced: set[str] = set()
    for info in graph.inputs:
        _check_dtype(info.dtype, f"input {info.name!r}")
        _produce(produced, info.name)
    for name, array in graph.constants.items():
        _check_dtype(str(array.dtype), f"constant {name!r}")
        _produce(produced, name)
    for node in graph.nodes:
        missing = [v for v in node.inputs if v and v not in produced]
        if missing:
            raise GraphFormatError(f"node {node.name!r} ({node.op}) uses {missing} before they are produced")
        for value in node.outputs:
            if value:
                _produce(produced, value)
    for info in graph.outputs:
        if info.name not in produced:
            raise GraphFormatError(f"graph output {info.name!r} is never produced")


def _produce(produced: set[str], name: str) -> None:
    if name in produced:
        raise GraphFormatError(f"value {name!r} is produced more than once")
    produced.add(name)


def _check_dtype(dtype: str, what: str) -> None:
    if dtype not in DTYPES:
        raise GraphFormatError(f"{what} has dtype {dtype}; the format holds {', '.join(DTYPES)}")


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def graph_bytes(graph: Graph) -> bytes:
    """The graph as file bytes (see the module docstring)."""
    check_structure(graph)
    table, blobs, offset = [], [], 0
    for name, array in graph.constants.items():
        data = np.array(array, order="C").astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        table.append({"name": name, "dtype": str(array.dtype), "shape": list(array.shape), "offset": offset,
                      "nbytes": len(data)})
        blobs.append(data + b"\0" * (_align(len(data)) - len(data)))
        offset += _align(len(data))
    header = {
        "inputs": [_info_json(i) for i in graph.inputs], "outputs": [_info_json(o) for o in graph.outputs],
        "constants": table,
        "nodes": [{"op": n.op, "name": n.name, "inputs": list(n.inputs), "outputs": list(n.outputs),
                   "attrs": n.attrs} for n in graph.nodes],
        "metadata": graph.metadata,
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text)) + text
    return prefix + b"\0" * (_align(len(prefix)) - len(prefix)) + b"".join(blobs)


def write_graph(graph: Graph, path: str | Path) -> int:
    """Writes the graph file; returns its size in bytes."""
    data = graph_bytes(graph)
    Path(path).write_bytes(data)
    return len(data)


def read_graph(source: str | Path | bytes) -> Graph:
    """Reads and checks a graph file (a path or its bytes); GraphFormatError says what is wrong."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if len(data) < _PREFIX.size:
        raise GraphFormatError(f"file too short for an edgefleet graph ({len(data)} bytes)")
    magic, version, size = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise GraphFormatError(f"not an edgefleet graph file (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise GraphFormatError(f"edgefleet graph format version {version}; this runtime reads {FORMAT_VERSION}")
    if size > MAX_HEADER or _PREFIX.size + size > len(data):
        raise GraphFormatError(f"truncated graph file: header of {size} bytes, file of {len(data)}")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + size])
        base = _align(_PREFIX.size + size)
        constants = {c["name"]: _constant(data, base, c) for c in header["constants"]}
        graph = Graph(
            tuple(_info(i) for i in header["inputs"]), tuple(_info(o) for o in header["outputs"]), constants,
            tuple(Node(str(n["op"]), str(n["name"]), tuple(n["inputs"]), tuple(n["outputs"]), dict(n["attrs"]))
                  for n in header["nodes"]),
            dict(header.get("metadata", {})),
        )
    except GraphFormatError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise GraphFormatError(f"corrupt graph header: {type(err).__name__}: {err}") from err
    check_structure(graph)
    return graph


def _constant(data: bytes, base: int, entry: dict) -> np.ndarray:
    dtype, offset, nbytes = entry["dtype"], entry["offset"], entry["nbytes"]
    shape = tuple(int(d) for d in entry["shape"])
    _check_dtype(dtype, f"constant {entry['name']!r}")
    want = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes != want or offset % ALIGN or offset < 0:
        raise GraphFormatError(f"constant {entry['name']!r}: {nbytes} bytes at offset {offset} for shape {shape} "
                               f"of {dtype} (needs {want} bytes at a multiple of {ALIGN})")
    if base + offset + nbytes > len(data):
        raise GraphFormatError(f"truncated graph file: constant {entry['name']!r} ends at byte "
                               f"{base + offset + nbytes}, the file has {len(data)}")
    raw = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=want // np.dtype(dtype).itemsize,
                        offset=base + offset)
    return raw.astype(dtype).reshape(shape)  # a native-order, writable copy


def _info(entry: dict) -> ValueInfo:
    return ValueInfo(str(entry["name"]), str(entry["dtype"]), tuple(entry["shape"]))


def _info_json(info: ValueInfo) -> dict:
    return {"name": info.name, "dtype": info.dtype, "shape": list(info.shape)}
