# maas: two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup java prometheus haproxy docker image build demo lint test test-unit bench bench-llm docs monitor clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) java  ## create/refresh .venv with the pinned dependencies, and Java 11+

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

java:
	@bash scripts/ensure-java.sh $(VENV)

prometheus:  ## Debian's Prometheus and promtool (the monitoring tests and `make monitor` need them)
	@bash scripts/ensure-debian.sh prometheus prometheus promtool

haproxy:  ## Debian's HAProxy (the cluster tests and `maas cluster` need it)
	@bash scripts/ensure-debian.sh haproxy haproxy

docker:  ## Debian's Docker Engine and mmdebstrap (the image test builds and runs the serving image)
	@bash scripts/ensure-debian.sh docker.io dockerd docker
	@bash scripts/ensure-debian.sh mmdebstrap mmdebstrap

image: setup docker  ## the serving image every manifest runs (maas-torchserve:0.12.0), built without a registry
	$(BIN)/maas image build

build: setup  ## train, export, verify and archive every model into model_store/
	$(BIN)/maas build

demo: setup  ## build, serve, send real requests, run a short load test, stop
	$(BIN)/maas demo

lint: setup  ## ruff (its rules in pyproject.toml)
	$(BIN)/ruff check .

test: setup prometheus haproxy docker lint  ## lint, then unit + integration tests (real TorchServes, Prometheus, HAProxy and the image's containers on 127.0.0.1)
	$(BIN)/python -m pytest

test-unit: setup prometheus  ## the fast tier: no server, tiny untrained zoo models (~45 s)
	$(BIN)/python -m pytest tests/unit

bench: setup  ## ours (ORT FP32, fused, INT8) vs eager PyTorch, TorchScript, OpenVINO and in-process; reports/bench-*/
	@$(BIN)/python -c "import openvino" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/maas bench

bench-llm: setup  ## a 568M Llama served by maas (fp32, int4) vs transformers in TorchServe and llama.cpp's server; benchmarks/results/llm-speed/
	@$(BIN)/python -c "import sentencepiece" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/llm_speed.py

monitor: setup prometheus  ## start Prometheus on 127.0.0.1:9090 watching the running TorchServe (maas monitor)
	$(BIN)/maas monitor start

docs: setup  ## build the documentation site into build/site/ (MkDocs, strict: a broken link fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:  ## remove build outputs, archives (language models' folders too), reports and server state (keeps .venv)
	rm -rf build reports run model_store/*.mar model_store/*/ .pytest_cache
