# The two set-up commands of the README: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench check-arm64 clean

$(STAMP): pyproject.toml edge/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchaudio==2.11.0"
	$(BIN)/pip install -q -e "./edge[embedded,dashboard]"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aiot-w2v2 demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check aiot_w2v2 edge tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/pretrain_throughput.py

# aiot-edge on aarch64 (qemu-user, Debian bookworm arm64 rootfs) scores like x86; needs root. Exit 77 of the
# script = this machine cannot run aarch64 binaries: it says why and the target does not fail.
check-arm64: $(STAMP)
	bash scripts/check_arm64.sh || [ $$? -eq 77 ]

clean:
	rm -rf demo_out .pytest_cache
