# Two commands for a fresh machine:
#   make test   set up .venv (if missing), build and install fastmuon with its test extras, run pytest
#   make demo   same set-up, then the main job
#
# torch: the pinned CPU build is installed before fastmuon, so the package's `torch>=2.4`
# range is already met and pip never pulls a multi-GB CUDA build. Where pip would find a CUDA
# wheel for this pin, point it at PyTorch's CPU index:
#   make test TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TRITON_SPEC ?= triton>=3.2
STAMP := $(VENV)/.fastmuon-installed
SOURCES := pyproject.toml CMakeLists.txt $(shell find csrc metal python -type f -not -name '*.pyc' 2>/dev/null)

.PHONY: help test test-triton demo install clean

help:
	@echo "make test     set up .venv (if missing), build and install fastmuon with its test extras, run the tests"
	@echo "make demo     the same set-up, then the quick benchmark and the training demo (bench/out/)"
	@echo "make test-triton  the Triton kernels' tests on the CPU (TRITON_INTERPRET=1): installs triton (~1 GB) into .venv"
	@echo "make install  only the set-up"
	@echo "make clean    remove the build tree, the venv, dist/ and bench/out/"
	@echo "Options: PYTHON=python3.12, TORCH_INDEX=\"--index-url https://download.pytorch.org/whl/cpu\""

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) $(SOURCES)
	$(PIP) install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PIP) install --quiet ".[mlx,torch,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	FASTMUON_REQUIRE_NATIVE=1 $(PY) -m pytest -q

# Triton is not part of the torch extra (CPU torch has no use for it; CUDA torch brings its own),
# so the CPU venv of `make test` lacks it and tests/test_triton.py skips; this target adds it.
test-triton: $(STAMP)
	$(PIP) install --quiet "$(TRITON_SPEC)"
	$(PY) -m pytest -q tests/test_triton.py

demo: $(STAMP)
	$(PY) -m fastmuon bench --quick
	mkdir -p bench/out
	PYTHONPATH=bench $(PY) -m demo --json bench/out/demo.json --plot bench/out/demo_loss.png

clean:
	rm -rf build $(VENV) dist bench/out

# A repaired manylinux wheel for the venv's Python in dist/ (build, auditwheel repair, check);
# .ci/build_wheel.sh says how. Release wheels: cibuildwheel (.github/workflows/wheels.yml).
.PHONY: wheel
wheel: $(PY)
	WHEEL_PYTHON=$(PY) .ci/build_wheel.sh
