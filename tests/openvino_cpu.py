"""What OpenVINO's CPU plugin executes for a precision hint on the CPU the tests run on.

From the plugin's reported OPTIMIZATION_CAPABILITIES, not from one developer's machine: an `f16` hint
runs in f16 where the CPU has AVX512-FP16 (Intel AMX machines: capability FP16), else in bf16 where it
has avx512_bf16 (AMD Zen 4 reports BF16, FP32, INT8), else in f32; a `bf16` hint runs in bf16 on both
kinds of AVX-512 BF16 CPU, else in f32.
"""

from __future__ import annotations

import openvino as ov


def cpu_executes(hint: str) -> str:
    capabilities = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if hint == "f16" and "FP16" in capabilities:
        return "f16"
    if hint in ("f16", "bf16") and "BF16" in capabilities:
        return "bf16"
    return "f32"
