"""A bundle's TFLite model as an OpenVINO model: the openvino targets' front for an imported `.tflite`.

OpenVINO's TFLite frontend (`openvino.convert_model("model.tflite")`) reads the flatbuffer directly; no
TensorFlow and no ONNX on the way. Two things differ from the bundle's interface, and both are fixed in
the graph here, so the IR takes and gives exactly what a request to the litert backend does:

- Names. OpenVINO names ports by the file's tensor names (`serving_default_pixels`); the bundle uses the
  SignatureDef's names (`pixels`), or, in a file without one, the tensor names (`litert.file_names`).
  Each port gets the bundle's name, matched by tensor name, else by position.
- Quantized inputs and outputs (a full-int8 file: int8 tensors with one scale and zero point). OpenVINO
  keeps them as raw int8 tensors; the bundle's interface is float32 (edge_runtime/backends/litert.py
  quantizes requests and dequantizes answers). The IR gets the same arithmetic as operations: a float32
  input becomes clamp(round_half_even(x / scale) + zero_point) as int8, an int8 output becomes
  (q - zero_point) * scale as float32, rounding half to even as numpy's `rint` does. Inside, OpenVINO
  runs the file's quantized graph with its own kernels (on the int8 fixture: the fully connected layer in
  u8, the convolutions in f32 on dequantized weights); the golden outputs agree within 3e-8.

The file's static batch stays in the IR (batch 1 for litert-torch's files); the artifact records it and
the backend runs larger requests in chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from edgefleet.core.errors import CompileError, EdgefleetError


def read_tflite(path: Path, target: str) -> tuple[ov.Model, dict]:
    """The model with the bundle's names and float32 I/O; and what was done ({"quantized_io": {name:
    [scale, zero_point]}, "names": {bundle name: tensor name}}). CompileError naming what cannot be read."""
    from edgefleet.edge_runtime.backends import litert

    try:
        interpreter = litert.Interpreter(model_path=str(path))
        _, _, in_details, out_details = litert.io_details(interpreter)
        model = ov.convert_model(str(path))
    except (EdgefleetError, RuntimeError, ValueError) as err:
        raise CompileError(f"{target}: OpenVINO cannot read {path.name}: {err}") from err
    names: dict[str, str] = {}
    quantized: dict[str, list] = {}
    params = list(model.get_parameters())
    results = list(model.get_results())
    for kind, ports, details in (("input", params, in_details), ("output", results, out_details)):
        if len(ports) != len(details):
            raise CompileError(f"{target}: OpenVINO reads {len(ports)} {kind}(s) in {path.name}, LiteRT "
                               f"{len(details)}: the file cannot be mapped to the bundle's interface")
        for position, (name, detail) in enumerate(details.items()):
            node = _port_for(ports, str(detail.get("name") or ""), position)
            names[name] = str(detail.get("name") or "")
            scale, zero_point = litert.quantization(detail, name)
            if scale:
                quantized[name] = [scale, zero_point]
            _rename(node, name)
    new_params = [_float_input(p, *quantized[_name(p)]) if _name(p) in quantized else p for p in params]
    new_results = [_float_output(r, *quantized[_name(r)]) if _name(r) in quantized else r for r in results]
    if quantized:
        model = ov.Model(new_results, new_params, model.get_friendly_name())
    return model, {"names": names, "quantized_io": quantized}


def _port_for(nodes: list, tensor_name: str, position: int) -> ov.Node:
    """The Parameter/Result whose tensor carries `tensor_name`, else the one at `position`."""
    for node in nodes:
        if tensor_name and tensor_name in _names(node):
            return node
    return nodes[position]


def _names(node: ov.Node) -> set[str]:
    port = node.output(0) if node.get_type_name() == "Parameter" else node.input_value(0)
    return set(port.get_names())


def _name(node: ov.Node) -> str:
    return node.get_friendly_name()


def _rename(node: ov.Node, name: str) -> None:
    node.set_friendly_name(name)
    node.output(0).get_tensor().set_names({name})
    if node.get_type_name() == "Result":  # a Result's names are its producer's tensor names too
        node.input_value(0).get_tensor().set_names({name})


def _float_input(param: ov.Node, scale: float, zero_point: int) -> ov.Node:
    """A float32 Parameter in place of an int8/uint8 one, quantized in the graph as the litert backend does."""
    name, dtype = _name(param), param.get_element_type()
    info = np.iinfo(dtype.to_dtype())
    x = ops.parameter(param.get_partial_shape(), ov.Type.f32, name=name)
    scaled = ops.round(ops.divide(x, np.float32(scale)), "half_to_even")
    grid = ops.clamp(ops.add(scaled, np.float32(zero_point)), float(info.min), float(info.max))
    quantized = ops.convert(grid, dtype)
    for target in param.output(0).get_target_inputs():
        target.replace_source_output(quantized.output(0))
    param.output(0).get_tensor().set_names(set())
    x.output(0).get_tensor().set_names({name})
    return x


def _float_output(result: ov.Node, scale: float, zero_point: int) -> ov.Node:
    """A float32 Result in place of an int8/uint8 one: (q - zero_point) * scale."""
    name = _name(result)
    value = result.input_value(0)
    dequantized = ops.multiply(ops.subtract(ops.convert(value, ov.Type.f32), np.float32(zero_point)),
                               np.float32(scale))
    value.get_tensor().set_names(set())
    dequantized.output(0).get_tensor().set_names({name})
    new = ops.result(dequantized)
    new.set_friendly_name(name)
    return new
