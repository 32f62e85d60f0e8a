# Two commands do all the set-up on a fresh machine:  `make up`  and  `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= llama-cpp,llama-server,model,test,bench,mlx,mlx-convert
APT_BINARIES := redis-server:redis-server nginx:nginx prometheus:prometheus

.PHONY: up test venv system models models-mlx lint format bench check-engine clean

comma := ,
venv: $(BIN)/.installed-$(subst $(comma),_,$(EXTRAS))
$(BIN)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	LLAMA_CPP_BUILD_JOBS=$$(nproc) CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[$(EXTRAS)]'
	rm -f $(BIN)/.installed-* && touch $@

system:
	@services/stack/install_system.sh $(APT_BINARIES)

models: venv
	$(BIN)/python models/fetch.py

models-mlx: models
	$(BIN)/python models/fetch.py --mlx

up: venv system models
	$(BIN)/python -m services.stack up

test: venv system models models-mlx
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv system models
	$(BIN)/python -m services.bench $(BENCH_ARGS)

check-engine: venv
	$(BIN)/python -m services.worker --check

clean:
	rm -rf run bench-results .pytest_cache .ruff_cache
