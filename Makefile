# The two commands of the README: `make demo` (the main job on embedded defaults; `make demo KEEP=1` leaves the
# cloud and its dashboard running at the end) and `make test`.
# Both create the virtual environment first; nothing else needs to be installed by hand: scripts/system-deps
# installs the system packages they need (as root with apt-get) or stops first with one line saying which.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/edgefleet
RUNS   ?= runs
# rich draws its tables 80 columns wide when output is not a terminal (CI logs); give them room.
export COLUMNS ?= 150

.PHONY: demo test test-fast lint bench clean venv system-deps-build system-deps-test

# g++, the Python headers and ensurepip for the venv; the tests add Mosquitto and PostgreSQL's server.
# test's check runs after build's, so `make -j` never runs two apt-gets at once.
system-deps-build:
	@PYTHON=$(PYTHON) bash scripts/system-deps build
system-deps-test: system-deps-build
	@PYTHON=$(PYTHON) bash scripts/system-deps test

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml $(wildcard cpp_ext/src/*) | system-deps-build
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[cloud,openvino,litert,test,browser-test]'
	@# openvino-telemetry sends usage events unless told no (it treats a missing consent file as yes)
	$(VENV)/bin/opt_in_out --opt_out >/dev/null
	touch $@

demo: venv
	@test -f $(RUNS)/keys/release.key || $(CLI) keys generate --out $(RUNS)/keys
	$(PY) examples/train_digits.py --out $(RUNS)/digits --key $(RUNS)/keys/release.key
	$(CLI) inspect $(RUNS)/digits/bundle
	$(CLI) verify $(RUNS)/digits/bundle --trust $(RUNS)/keys
	$(CLI) predict $(RUNS)/digits/bundle --trust $(RUNS)/keys --input $(RUNS)/digits/test_x.npy \
	    --labels $(RUNS)/digits/test_y.npy --show 5
	$(CLI) bench $(RUNS)/digits/bundle --trust $(RUNS)/keys --batch 1,8,32 --compare-raw \
	    --json $(RUNS)/digits/bench.json
	rm -rf $(RUNS)/compressed
	$(CLI) compress $(RUNS)/digits/bundle --recipe examples/recipe_digits.toml --data $(RUNS)/digits/data.npz \
	    --torch-model examples.digits_model:load --key $(RUNS)/keys/release.key --out $(RUNS)/compressed \
	    --json $(RUNS)/compressed/report.json --plot $(RUNS)/compressed/report.png
	rm -rf $(RUNS)/compiled $(RUNS)/compiled-int8
	$(CLI) compile $(RUNS)/digits/bundle --target onnxruntime-cpu --target openvino-cpu --target native \
	    --target tensorrt --key $(RUNS)/keys/release.key --out $(RUNS)/compiled --json $(RUNS)/compile.json
	$(CLI) compile $(RUNS)/compressed/02-quantize_static --target openvino-cpu --target native --target tensorrt \
	    --option tensorrt.precision=int8 --key $(RUNS)/keys/release.key --out $(RUNS)/compiled-int8 \
	    --json $(RUNS)/compile-int8.json
	$(CLI) bench $(RUNS)/compiled --trust $(RUNS)/keys --backend onnxruntime-cpu,openvino-cpu,native \
	    --batch 1,32 --threads 1 --runs 500 --json $(RUNS)/bench-backends.json
	$(CLI) bench $(RUNS)/compiled-int8 --trust $(RUNS)/keys --backend onnxruntime,openvino-cpu,native \
	    --batch 1,32 --threads 1 --runs 500 --json $(RUNS)/bench-backends-int8.json
	@# bring your own model: the exported ONNX file imported as if a colleague had sent it (schema from the
	@# file, golden outputs from onnxruntime, drift profile from 256 calibration rows keyed by input name)
	$(PY) -c "import numpy as np; np.savez('$(RUNS)/digits/calib.npz', pixels=np.load('$(RUNS)/digits/data.npz')['x_train'][:256])"
	printf '%s\n' 0 1 2 3 4 5 6 7 8 9 > $(RUNS)/digits/classes.txt
	rm -rf $(RUNS)/imported
	$(CLI) import $(RUNS)/digits/bundle/model.onnx --out $(RUNS)/imported --name digits-imported --version 1 \
	    --reference-data $(RUNS)/digits/calib.npz --class-names $(RUNS)/digits/classes.txt --key $(RUNS)/keys/release.key
	$(CLI) verify $(RUNS)/imported --trust $(RUNS)/keys
	$(CLI) predict $(RUNS)/imported --trust $(RUNS)/keys --input $(RUNS)/digits/test_x.npy --top-k 3 --show 3
	$(PY) examples/train_tabular.py --out $(RUNS)/tabular --key $(RUNS)/keys/release.key
	rm -rf $(RUNS)/tabular-compressed
	$(CLI) compress $(RUNS)/tabular/bundle --recipe examples/recipe_tabular.toml --data $(RUNS)/tabular/data.npz \
	    --torch-model examples.tabular_model:load --key $(RUNS)/keys/release.key --out $(RUNS)/tabular-compressed \
	    --json $(RUNS)/tabular-compressed/report.json --plot $(RUNS)/tabular-compressed/report.png
	@# labels that come 15 s late: the accuracy estimated from confidence falls first, the measured one later
	$(PY) examples/labels_demo.py --bundle $(RUNS)/digits/bundle --keys $(RUNS)/keys \
	    --data $(RUNS)/digits/test_x.npy --labels $(RUNS)/digits/test_y.npy --workdir $(RUNS)/labels --label-delay 15
	@# the loop closed: drift -> alert -> labelled captures -> retrain, int8, evaluate -> canary on accuracy -> v2
	rm -rf $(RUNS)/loop
	$(PY) examples/loop_demo.py --bundle $(RUNS)/digits/bundle --keys $(RUNS)/keys --workdir $(RUNS)/loop
	@# KEEP=1: the cloud stays up at the end with the seeded fleet; it prints the dashboard's URL and a token
	$(PY) examples/fleet_demo.py --bundle $(RUNS)/digits/bundle --keys $(RUNS)/keys \
	    --data $(RUNS)/digits/test_x.npy --labels $(RUNS)/digits/test_y.npy --workdir $(RUNS)/fleet \
	    $(if $(KEEP),--keep --also $(RUNS)/compiled-int8 --also $(RUNS)/imported)

test: system-deps-test venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) benchmarks/bench_predictor_overhead.py
	$(PY) benchmarks/bench_export_error.py
	$(PY) benchmarks/bench_telemetry_cost.py
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_drift_detection.py
	$(PY) benchmarks/bench_quantize.py
	$(PY) benchmarks/bench_prune.py
	$(PY) benchmarks/bench_distill.py
	$(PY) benchmarks/bench_swap.py
	$(PY) benchmarks/bench_deploy.py
	$(PY) benchmarks/bench_native.py
	$(PY) benchmarks/bench_backends.py

clean:
	rm -rf $(RUNS) build *.egg-info cpp_ext/*.so
