"""count_flops against numbers worked out by hand, on hand-built graphs and on a real torch export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compilers.flops import count_flops


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def _value(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def test_grouped_strided_conv_with_bias():
    # x: N x 4 x 10 x 10, 6 filters of 2 channels (group=2), 3x3, stride 2, pad 1 -> N x 6 x 5 x 5.
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 2], pads=[1, 1, 1, 1])
    model = _model([conv], [_value("x", ["N", 4, 10, 10])], [_value("y", ["N", 6, None, None])],
                   [_init("w", 6, 2, 3, 3), _init("b", 6)])
    n, cout, hout, wout, cin_per_group, k = 2, 6, 5, 5, 4 // 2, 3 * 3
    macs = 2 * n * cout * hout * wout * cin_per_group * k  # 10800
    bias = n * cout * hout * wout  # 300

    count = count_flops(model, batch=2)

    assert count == {"total": macs + bias, "by_op": {"Conv": 11100}, "uncounted": []}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # input model untouched


def test_gemm_with_transposed_weight_and_bias():
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    model = _model([gemm], [_value("x", ["batch", 5])], [_value("y", ["batch", 7])],
                   [_init("w", 7, 5), _init("b", 7)])

    count = count_flops(model, batch=3)

    assert count["total"] == 2 * 3 * 7 * 5 + 3 * 7
    assert count["by_op"] == {"Gemm": 231}


def test_batched_and_broadcast_matmul():
    # (b, 4, 3, 5) @ (5, 6) -> (b, 4, 3, 6); then (b, 4, 3, 6) @ (b, 4, 6, 2) -> (b, 4, 3, 2).
    first = helper.make_node("MatMul", ["a", "w"], ["h"])
    second = helper.make_node("MatMul", ["h", "c"], ["y"])
    model = _model([first, second], [_value("a", ["batch", 4, 3, 5]), _value("c", ["batch", 4, 6, 2])],
                   [_value("y", ["batch", 4, 3, 2])], [_init("w", 5, 6)])

    count = count_flops(model, batch=2)

    assert count["by_op"] == {"MatMul": 2 * (2 * 4) * 3 * 6 * 5 + 2 * (2 * 4) * 3 * 2 * 6}


def test_activations_pooling_normalisation_and_unknown_ops():
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Softmax", ["f"], ["sm"]),
        helper.make_node("Einsum", ["sm", "sm"], ["y"], equation="bi,bi->b"),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Add", ["shape", "shape"], ["shape2"]),  # int64: not floating-point work
    ]
    inits = [_init(name, 3) for name in ("s", "bb", "m", "v")]
    model = _model(nodes, [_value("x", ["batch", 3, 8, 8])],
                   [_value("y", ["batch"]), _value("shape2", [4], TensorProto.INT64)], inits)

    count = count_flops(model, batch=2)

    elements, pooled = 2 * 3 * 8 * 8, 2 * 3 * 4 * 4
    assert count["by_op"] == {
        "BatchNormalization": 2 * elements,
        "Relu": elements,
        "MaxPool": 4 * pooled,
        "GlobalAveragePool": pooled,
        "Softmax": 3 * 2 * 3,
        "Add": 0,
    }
    assert count["uncounted"] == ["Einsum"]
    assert count["total"] == sum(count["by_op"].values())


def test_batch_must_be_positive():
    relu = helper.make_node("Relu", ["x"], ["y"])
    model = _model([relu], [_value("x", ["batch"])], [_value("y", ["batch"])])
    with pytest.raises(ValueError, match="batch"):
        count_flops(model, batch=0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export internals
def test_torch_cnn_export_matches_hand_formula():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 16, 3)
            self.fc = torch.nn.Linear(16 * 6 * 6, 10)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.relu(self.conv2(x))
            return self.fc(torch.flatten(x, 1))

    program = torch.onnx.export(
        Net().eval(), (torch.randn(2, 1, 16, 16),), dynamo=True, external_data=False,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    model = program.model_proto

    def per_sample() -> dict[str, int]:
        conv1 = 2 * 8 * 16 * 16 * 1 * 9 + 8 * 16 * 16  # 16x16 kept by padding, then pooled to 8x8
        conv2 = 2 * 16 * 6 * 6 * 8 * 9 + 16 * 6 * 6  # 8x8 -> 6x6
        fc = 2 * 10 * 576 + 10
        return {"Conv": conv1 + conv2, "Gemm": fc}

    for batch in (1, 5):
        count = count_flops(model, batch=batch)
        expected = per_sample()
        assert count["by_op"]["Conv"] == batch * expected["Conv"]
        assert count["by_op"]["Gemm"] == batch * expected["Gemm"]
        assert count["by_op"]["Relu"] == batch * (8 * 16 * 16 + 16 * 6 * 6)
        assert count["by_op"]["MaxPool"] == batch * 8 * 8 * 8 * 4
        assert count["uncounted"] == []


def test_integer_matmul_and_conv_count_like_their_float_twins():
    from onnx import TensorProto, helper

    from edgefleet.compilers.flops import count_flops

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"]),
         helper.make_node("ConvInteger", ["x", "w"], ["z"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        "int8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 4, 6]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [6, 5]),
         helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 8, 8]),
         helper.make_tensor_value_info("w", TensorProto.INT8, [3, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4, 5]),
         helper.make_tensor_value_info("z", TensorProto.INT32, [1, 3, 8, 8])],
    )
    counted = count_flops(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert counted["by_op"]["MatMulInteger"] == 2 * 4 * 5 * 6
    assert counted["by_op"]["ConvInteger"] == 2 * (3 * 8 * 8) * (2 * 3 * 3)  # no bias input
    assert counted["uncounted"] == []
