"""edgefleet.cloud.compress: make a model smaller and faster, and say what each step cost.

Every method is a pipeline stage that takes a model (an ONNX bundle, or a torch module for the steps
that train) and gives a new one without touching its input, recording its options in the lineage:
quantization (quantize.py), pruning (prune.py), low-rank factorisation (lowrank.py), distillation
(distill.py). evaluate.py measures a model (accuracy overall and per class or slice, size, parameters,
FLOPs, latency, numeric error against the float model); report.py puts the steps side by side and
flags the classes or slices a step hurt disproportionately; recipe.py chains steps from a TOML file.
"""
