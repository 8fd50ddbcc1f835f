# StreamLoop: `make help` lists the targets. `make demo` and `make test` do all set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin
KAFKA := infra/kafka/kafka.sh
REDIS := infra/redis/redis.sh
RAY := infra/ray/ray.sh
PEER_ENV := var/envs/quix
LABELSTUDIO_ENV := var/envs/labelstudio
WITH_INFRA := infra/with-infra.sh

.PHONY: help setup up down status up-cluster down-cluster test test-slow test-unit test-integration \
        test-e2e test-chaos soak bench-scale bench-fetch bench-baseline lint fmt bench peer-env loop-bench drift demo compose-check clean

help: ## Show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install everything (idempotent): uv, Python deps (locked), Kafka jars, redis-server
	@$(PYTHON) -c "import uv" 2>/dev/null || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	@# torch and its CUDA wheels come from uv's cache after the first install.
	@$(UV) sync --frozen --extra dev --quiet
	@$(KAFKA) jars
	@$(REDIS) install
	@command -v docker-compose >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null; } \
	  || echo "note: docker-compose not installed; 'make compose-check' needs it (apt-get install docker-compose)"
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
	  || echo "note: chromium not installed; the dashboard's browser test needs it (apt-get install chromium)"
	@command -v kcat >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -q kcat >/dev/null; } \
	  || echo "note: kcat not installed; the documented Kafka examples and their test need it (apt-get install kcat)"
	@echo "setup: done"

up: setup ## Start local Kafka (KRaft, 127.0.0.1:9092), Redis (127.0.0.1:6379) and a Ray head (127.0.0.1:6380); create topics
	@$(KAFKA) start single
	@$(REDIS) start
	@$(RAY) start
	@$(BIN)/streamloop topics create

down: ## Stop everything StreamLoop started locally (Kafka single + cluster, Redis, the Ray head)
	@$(RAY) stop
	@$(KAFKA) stop single
	@$(KAFKA) stop cluster
	@$(REDIS) stop
	@infra/labelstudio/labelstudio.sh stop

status: ## Show local infrastructure: processes, ports, resident memory
	@$(KAFKA) status
	@$(REDIS) status
	@$(RAY) status

up-cluster: setup ## Start a 3-broker KRaft cluster on 127.0.0.1:9192/9194/9196 (RF 3, min ISR 2)
	@$(KAFKA) start cluster

down-cluster: ## Stop the 3-broker cluster
	@$(KAFKA) stop cluster

test: setup labelstudio-env ## Run every test tier against real Kafka and Redis, the slow tests aside (starts and stops what it needs)
	@$(WITH_INFRA) $(BIN)/pytest --durations=30 -m "not slow" tests/unit tests/integration tests/e2e tests/perf tests/chaos

test-slow: setup ## The slow tests make test leaves out: the corrupted-label closed loop, the overload
	@$(WITH_INFRA) $(BIN)/pytest --durations=10 -m slow tests/e2e tests/chaos

test-unit: setup ## Unit tests only (no infrastructure)
	@$(BIN)/pytest tests/unit

test-integration: setup labelstudio-env ## Integration tests (real Kafka, Redis and Label Studio)
	@$(WITH_INFRA) $(BIN)/pytest tests/integration

test-e2e: setup ## End-to-end tests (real Kafka and Redis, whole commands)
	@$(WITH_INFRA) $(BIN)/pytest tests/e2e

test-chaos: setup ## Fault tests: outages, kills, poison, rebalance, overload; counted per frame (own Kafka and Redis)
	@$(BIN)/pytest tests/chaos

SOAK_MINUTES ?= 30
soak: setup ## Soak (not in CI): the stack at half saturation for SOAK_MINUTES (30); memory of every process
	@STREAMLOOP_SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/pytest tests/chaos/test_soak.py -s

lint: setup ## ruff (lint + format check), mypy, and the import rule (infra/check_imports.py)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy
	@$(BIN)/python infra/check_imports.py

fmt: setup ## Format and auto-fix with ruff
	@$(BIN)/ruff format .
	@$(BIN)/ruff check --fix .

bench-scale: setup ## End-to-end saturation with 1/2/3 serving ingress processes and 1/2 Ray replicas (stops Ray)
	@$(WITH_INFRA) $(BIN)/python -m tests.bench.bench_scale

bench-fetch: setup ## The frame path's least fetch size: CPU a frame and latency at 128/256/512 KiB, two rounds on one broker (var/bench/fetch.json)
	@$(WITH_INFRA) $(BIN)/python -m tests.bench.bench_fetch $(BENCH_FETCH_ARGS)

bench-baseline: setup ## Re-measure the regression guard's baseline (tests/perf/baseline.json): three runs, the median
	@$(WITH_INFRA) $(BIN)/python -m tests.perf.test_ratio_guard

bench: setup peer-env ## Benchmarks (bus, ingest, image fitting, training, warm start, training on Ray, runtimes, CPU per stage, serving and its peer, a camera's publisher, the stack at rest, architectures), then the tables of the run (var/bench/report.md)
	@$(WITH_INFRA) sh -c 'since=$$(date +%s) && $(BIN)/python -m tests.bench.bench_bus && $(BIN)/python -m tests.bench.bench_ingest && $(BIN)/python -m tests.bench.bench_images && $(BIN)/python -m tests.bench.bench_training && $(BIN)/python -m tests.bench.bench_warm && $(BIN)/python -m tests.bench.bench_ray_train && $(BIN)/python -m tests.bench.bench_runtimes && $(BIN)/python -m tests.bench.bench_profile && $(BIN)/python -m tests.bench.bench_serving && $(BIN)/python -m tests.bench.bench_publisher && $(BIN)/python -m tests.bench.bench_idle && $(BIN)/python -m tests.bench.bench_architectures && $(BIN)/python -m tests.bench.bench_report --since $$since'

peer-env: setup ## The environment of the benchmark's Quix Streams peer (var/envs/quix; never the project's venv)
	@test -x $(PEER_ENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(PEER_ENV)
	@$(UV) pip install --quiet --python $(PEER_ENV)/bin/python -r infra/peer/requirements.txt

labelstudio-env: setup ## Label Studio's environment (var/envs/labelstudio; never the project's venv)
	@test -x $(LABELSTUDIO_ENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(LABELSTUDIO_ENV)
	@$(UV) pip install --quiet --python $(LABELSTUDIO_ENV)/bin/python -r infra/labelstudio/requirements.txt

up-labelstudio: labelstudio-env ## Start Label Studio on 127.0.0.1:8740 (data in var/labelstudio) for the annotation bridge
	@infra/labelstudio/labelstudio.sh start

down-labelstudio: ## Stop the local Label Studio
	@infra/labelstudio/labelstudio.sh stop

loop-bench: setup ## The closed loop, drift onset to recovery: day-to-night, fog-bank, gradual-dusk, three demo runs each (an hour or more; var/bench/loop.json)
	@$(WITH_INFRA) $(BIN)/python -m tests.bench.bench_loop $(LOOP_BENCH_ARGS)

drift: setup ## Measure how a CNN trained on day frames fares at night and in fog
	@$(BIN)/python infra/measure_drift.py

demo: up ## The closed loop from nothing: bootstrap a model, day to night, drift, retrain, shadow, promote, recover
	@RAY_ADDRESS=$$($(RAY) address) $(BIN)/streamloop demo

compose-check: ## Validate docker-compose.yml without a Docker engine
	@docker-compose config -q && echo "docker-compose.yml: valid"

clean: down ## Stop everything and delete var/ (Kafka logs, Redis data, traces, artifacts)
	@rm -rf var
