"""The numpy spec of the recurrent cells, LSTM and GRU (float32), in the format's form (graph_ops.py):
ONNX's inputs and attributes with layout 0 and the default activations, and one output that stacks Y,
Y_h (and LSTM's Y_c) along axis 0: (T + 1, D, B, H) for GRU, (T + 2, D, B, H) for LSTM.
graph_reference.KERNELS includes them."""

from __future__ import annotations

import numpy as np

F32 = np.float32


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def _inputs(args: list, gates: int) -> tuple:
    x, w, r = args[:3]
    bias, lengths, h0, c0 = (list(args[3:]) + [None] * 4)[:4]
    steps, batch = x.shape[:2]
    dirs, hidden = w.shape[0], r.shape[-1]
    if lengths is not None and np.any(lengths != steps):
        raise ValueError(f"sequence_lens must equal the sequence length ({steps}) for every batch row: ragged "
                         "batches are not supported")
    bias = np.zeros((dirs, 2 * gates * hidden), F32) if bias is None else bias
    h0 = np.zeros((dirs, batch, hidden), F32) if h0 is None else h0
    c0 = np.zeros((dirs, batch, hidden), F32) if c0 is None else c0
    return x, w, r, bias, h0, c0


def _order(attrs: dict, steps: int, d: int) -> range:
    reverse = attrs.get("direction", "forward") == "reverse" or d == 1
    return range(steps - 1, -1, -1) if reverse else range(steps)


def lstm(args: list, attrs: dict) -> np.ndarray:
    x, w, r, bias, h0, c0 = _inputs(args, 4)
    steps, dirs, hidden = x.shape[0], w.shape[0], r.shape[-1]
    out = np.zeros((steps + 2, dirs, x.shape[1], hidden), F32)
    for d in range(dirs):
        h, c = h0[d], c0[d]
        b = bias[d, :4 * hidden] + bias[d, 4 * hidden:]
        for t in _order(attrs, steps, d):
            g = (x[t] @ w[d].T + h @ r[d].T + b).astype(F32)
            i, o, f, cand = np.split(g, 4, axis=-1)
            c = (_sigmoid(f) * c + _sigmoid(i) * np.tanh(cand)).astype(F32)
            h = (_sigmoid(o) * np.tanh(c)).astype(F32)
            out[t, d] = h
        out[steps, d], out[steps + 1, d] = h, c
    return out


def gru(args: list, attrs: dict) -> np.ndarray:
    x, w, r, bias, h0, _ = _inputs(args, 3)
    steps, dirs, hidden = x.shape[0], w.shape[0], r.shape[-1]
    before_reset = int(attrs.get("linear_before_reset", 0))
    out = np.zeros((steps + 1, dirs, x.shape[1], hidden), F32)
    for d in range(dirs):
        h = h0[d]
        wb, rb = np.split(bias[d], 2)
        w_zr, w_h = w[d, :2 * hidden], w[d, 2 * hidden:]
        r_zr, r_h = r[d, :2 * hidden], r[d, 2 * hidden:]
        for t in _order(attrs, steps, d):
            zr = _sigmoid((x[t] @ w_zr.T + h @ r_zr.T + wb[:2 * hidden] + rb[:2 * hidden]).astype(F32))
            z, reset = np.split(zr, 2, axis=-1)
            if before_reset:
                inner = reset * (h @ r_h.T + rb[2 * hidden:])
            else:
                inner = (reset * h) @ r_h.T + rb[2 * hidden:]
            n = np.tanh((x[t] @ w_h.T + wb[2 * hidden:] + inner).astype(F32))
            h = ((F32(1) - z) * n + z * h).astype(F32)
            out[t, d] = h
        out[steps, d] = h
    return out


KERNELS = {"LSTM": lstm, "GRU": gru}
