"""ONNX's own operator tests (onnx.backend.test) for every operator and type the native backend claims.

prepare() converts the ModelProto with the native target's conversion (compilers/targets/native.py,
which refuses what the executor cannot run with a CompileError) and runs it with the C++ executor.

    .venv/bin/python -m pytest tests/compilers/test_native_conformance.py -q
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.backend.base import Backend, BackendRep
from onnx.backend.test import BackendTest

from edgefleet.compilers.targets.native import onnx_to_graph
from edgefleet.cpp_ext.graph_native import load_executor


class NativeRep(BackendRep):
    def __init__(self, model: onnx.ModelProto) -> None:
        graph, _ = onnx_to_graph(model)
        self.executor = load_executor(graph)
        self.inputs = [i.name for i in graph.inputs]
        self.outputs = [o.name for o in graph.outputs]
        # the format's bool is uint8 0/1: bool tensors cross the boundary as uint8
        self.bool_outputs = {o.name for o in model.graph.output
                             if o.type.tensor_type.elem_type == onnx.TensorProto.BOOL}

    def run(self, inputs, **kwargs):  # noqa: ANN001, ANN003 - onnx's signature
        feed = dict(inputs) if isinstance(inputs, dict) else dict(zip(self.inputs, inputs, strict=True))
        feed = {k: np.asarray(v).astype(np.uint8) if np.asarray(v).dtype == np.bool_ else np.asarray(v)
                for k, v in feed.items()}
        result = self.executor.run(feed)
        return tuple(result[name].astype(bool) if name in self.bool_outputs else result[name] for name in self.outputs)


class NativeBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> NativeRep:  # noqa: ANN003
        super().prepare(model, device, **kwargs)
        return NativeRep(model)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


# The claimed operators (the docs' list must equal what passes here).
CLAIMED = [
    r"test_conv_", r"test_gemm_", r"test_matmul_", r"test_relu", r"test_clip", r"test_add", r"test_sub",
    r"test_mul", r"test_div", r"test_maxpool_", r"test_averagepool_", r"test_globalaveragepool",
    r"test_globalmaxpool", r"test_softmax_", r"test_flatten_", r"test_reshape_", r"test_squeeze",
    r"test_unsqueeze_", r"test_identity", r"test_transpose_", r"test_quantizelinear", r"test_dequantizelinear",
    r"test_sigmoid", r"test_tanh", r"test_hardsigmoid", r"test_hardswish", r"test_leakyrelu", r"test_concat_",
    r"test_erf", r"test_gelu_", r"test_sqrt", r"test_reciprocal", r"test_exp", r"test_neg", r"test_pow",
    r"test_prelu_", r"test_equal", r"test_where_", r"test_cast_", r"test_expand_", r"test_gather_",
    r"test_slice", r"test_split_", r"test_constant_pad", r"test_reflect_pad", r"test_edge_pad",
    r"test_reduce_(sum|mean|max|l2)_", r"test_layer_normalization_", r"test_resize_", r"test_convtranspose",
    r"test_lstm_", r"test_gru_",
]
# Variants not claimed, each with the reason.
NOT_CLAIMED = [
    r"_expanded",  # function-expanded forms use other ops (Exp, ReduceSum, Less, Where, ...)
    r"_ver18",  # the same expansions at opset 18
    r"_(u?int(2|4|16|32|64))_",  # Add/Sub/Mul/Div and Clip on integer types: float32 only
    r"test_(add|sub|mul|div)_(u?int8)_", r"test_clip_default_int8",  # float32 only
    r"test_div_int32_trunc",  # integer division
    r"test_(max|average)pool_3d_",  # pools: 1-D (NCW) and 2-D (NCHW) only
    r"test_maxpool_with_argmax",  # MaxPool's Indices output
    r"test_(de)?quantizelinear_(e4m3fn|e5m2|float4e2m1|int2|uint2|int4|uint4|int16|uint16|blocked)",
    # float8/float4/int2/int4/int16 types and blocked quantization: int8/uint8(/int32 in) only
    r"test_identity_(opt|sequence)",  # optional and sequence types
    r"test_dequantizelinear_e4m3fn",  # float8
    r"test_squeezenet",  # a whole real model (downloaded), not an operator test
    r"test_cast_.*(BFLOAT16|DOUBLE|FLOAT16|FLOAT8|FLOAT4|INT2|INT4|UINT2|UINT4|e8m0|STRING|no_saturate)",
    # Cast: the format's dtypes only (float32, int8, uint8, int32, int64)
    r"test_equal_string", r"test_reduce_max_bool", r"test_reduce_.*_empty_set",  # strings, bool max, empty axes
    r"test_gather_elements_", r"test_split_to_sequence_", r"test_reduce_sum_square_",  # other operators
    r"test_split_(variable_parts|zero_size_splits)_",  # split sizes given at run time
    r"test_convtranspose_(1d|3d|autopad_same|output_shape|kernel_shape)",  # ConvTranspose: 2-D, given pads only
    r"test_resize_.*(cubic|antialias|tf_crop|axes|not_larger|not_smaller|half_pixel_symmetric)",
    # Resize: nearest and linear on all axes, four coordinate modes, the stretch policy
    r"test_resize_.*_scales_",  # scales given at run time (sizes may be; scales must be constant)
    r"test_lstm_with_peepholes",  # LSTM's peepholes (input P); clip and other activations are refused too
]

backend_test = BackendTest(NativeBackend, __name__)
for pattern in CLAIMED:
    backend_test.include(pattern + ".*_cpu$")
for pattern in NOT_CLAIMED:
    backend_test.exclude(pattern)

# onnx marks every case outside the claimed set as skipped: drop those (thousands) so the report lists the
# claimed cases only; NOT_CLAIMED above says what is left out and why.
CASES = backend_test.test_cases  # a property that builds new classes on every access: take them once
for case in CASES.values():
    for attribute in [a for a in vars(case) if a.startswith("test_")]:
        if getattr(getattr(case, attribute), "__unittest_skip__", False):
            delattr(case, attribute)
globals().update(CASES)


def test_unclaimed_operator_is_refused() -> None:
    """An op outside the claimed set fails in prepare(), where the harness sees it, not at run."""
    from edgefleet.core.errors import CompileError

    node = onnx.helper.make_node("Sin", ["x"], ["y"], name="sine")
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", 1, [2])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [2])])
    with pytest.raises(CompileError, match=r"Sin \(node 'sine'\)"):
        NativeBackend.prepare(onnx.helper.make_model(graph))
