#!/usr/bin/env bash
# Runs INSIDE the arm64 root (chroot, qemu-user emulation); started by scripts/check-aarch64.
# Layout (made by the host script): $WORK/edgefleet (project snapshot), $WORK/bundle, $WORK/trust.pub,
# $WORK/rows.npy, $WORK/labels.npy. Writes KEY=VALUE lines to $WORK/results.env for the host's summary.
set -euo pipefail
WORK=${WORK:-/opt/edgefleet-check}
RESULTS=$WORK/results.env
PARITY=${EDGEFLEET_ARM64_PARITY:-1}
cd "$WORK"
: >"$RESULTS"
record() { printf '%s=%q\n' "$1" "$2" >>"$RESULTS"; }
step() { printf '\n== [arm64 root] %s\n' "$*"; }

step "machine"
arch=$(uname -m)
echo "uname -m: $arch"
py_machine=$(python3 -c "import platform; print(platform.machine())")
py_version=$(python3 -c "import platform; print(platform.python_version())")
echo "platform.machine(): $py_machine, Python $py_version"
record ARCH "$arch"
record PY_MACHINE "$py_machine"
record PY_VERSION "$py_version"
if [ "$arch" != aarch64 ] || [ "$py_machine" != aarch64 ]; then
  echo "not running as aarch64 (uname -m: $arch, platform.machine(): $py_machine)" >&2
  exit 1
fi

step "venv and index check (pip download)"
rm -rf "$WORK/venv" "$WORK/dl"
python3 -m venv "$WORK/venv"
# shellcheck disable=SC1091
. "$WORK/venv/bin/activate"
pip --version
pip config list || true
pip download --no-deps --only-binary=:all: -d "$WORK/dl" packaging >/dev/null
echo "pip download: ok ($(ls "$WORK/dl"))"

step "pip install ./edgefleet[edge] (builds the C++ extension with g++)"
t0=$(date +%s.%N)
pip install --progress-bar off "./edgefleet[edge]"
t1=$(date +%s.%N)
install_s=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
echo "install: ${install_s} s"
record INSTALL_SECONDS "$install_s"
# Run the checks away from the snapshot: `edgefleet` is a namespace package, so a folder named
# edgefleet in the working directory would shadow the installed (compiled) one.
mkdir -p "$WORK/run" && cd "$WORK/run"
python - <<'EOF'
import edgefleet.cpp_ext._native as native, importlib.metadata as md, platform
print("native extension:", native.__file__)
print("onnxruntime", md.version("onnxruntime"), "numpy", md.version("numpy"), "on", platform.machine())
EOF
record ORT_VERSION "$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')"

step "no torch on the device"
python -c "import sys, edgefleet.edge_runtime, edgefleet.edge_runtime.predictor; assert 'torch' not in sys.modules; print('torch not imported: ok')"
record NO_TORCH passed

step "edgefleet verify (signature, hashes, self-test)"
if edgefleet verify "$WORK/bundle" --trust "$WORK/trust.pub" | tee "$WORK/verify.txt"; then
  record SELF_TEST passed
else
  record SELF_TEST failed
  exit 1
fi

step "edgefleet predict"
edgefleet predict "$WORK/bundle" --trust "$WORK/trust.pub" --input "$WORK/rows.npy" \
  --labels "$WORK/labels.npy" --output "$WORK/predictions.npy" --show 5 | tee "$WORK/predict.txt"
acc=$(sed -n 's/.*accuracy: *\([0-9.]*\).*/\1/p' "$WORK/predict.txt" | tail -1)
record PREDICT_ACCURACY "${acc:-unknown}"

step "edgefleet bench (200 runs, batch 1)"
edgefleet bench "$WORK/bundle" --trust "$WORK/trust.pub" --runs 200 --json "$WORK/bench.json"
p50=$(python -c "import json; r = json.load(open('$WORK/bench.json')); print(f\"{r['results'][0]['latency_ms']['p50']:.4f}\")")
record BENCH_P50_MS "$p50"

step "native backend: the graph compiled on the host, run here"
if python - "$WORK/bundle" "$WORK/trust.pub" <<'EOF'
import sys
from edgefleet.cpp_ext.graph_native import isa
from edgefleet.edge_runtime.predictor import Predictor
predictor = Predictor(sys.argv[1], backends=["native"], trusted_keys=[sys.argv[2]])
report = predictor.self_test()
print(predictor.describe(), "kernels:", isa())
print(report)
sys.exit(0 if report.passed and predictor.backend_name == "native" else 1)
EOF
then
  record NATIVE_SELF_TEST passed
else
  record NATIVE_SELF_TEST failed
  exit 1
fi
# the default tier and every tier the parity tests compare (neondot only when the CPU has sdot)
record NATIVE_ISA "$(python -c 'from edgefleet.cpp_ext.graph_native import available_isas as a, isa; print(isa(), "of", ",".join(a()))')"
edgefleet bench "$WORK/bundle" --trust "$WORK/trust.pub" --backend native --runs 200 --json "$WORK/native-bench.json"
p50=$(python -c "import json; r = json.load(open('$WORK/native-bench.json')); print(f\"{r['results'][0]['latency_ms']['p50']:.4f}\")")
record NATIVE_P50_MS "$p50"

if [ "$PARITY" = 1 ]; then
  step "native-kernel parity tests (tests/cpp_ext)"
  pip install -q "pytest>=8" "pytest-timeout>=2.3"
  # Run from a copy of the tests only, so that `edgefleet` resolves to the installed (arm64-built) package.
  rm -rf "$WORK/t" && mkdir -p "$WORK/t"
  cp -r "$WORK/edgefleet/tests" "$WORK/t/tests"
  cp "$WORK/edgefleet/pyproject.toml" "$WORK/t/"
  cd "$WORK/t"
  set +e
  python -m pytest tests/cpp_ext -q -p no:cacheprovider 2>&1 | tee "$WORK/parity.txt"
  rc=${PIPESTATUS[0]}
  set -e
  cd "$WORK/run"
  line=$(grep -E '[0-9]+ (passed|failed)' "$WORK/parity.txt" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
  record PARITY "${line:-rc $rc}"
  record PARITY_RC "$rc"
  [ "$rc" = 0 ] || exit 1
else
  record PARITY skipped
  record PARITY_RC 0
fi
