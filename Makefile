## torchspark — one command per habit. `make demo` and `make test` do all set-up themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV    := $(CURDIR)/.venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
# torch-sys builds against the venv's torch (libtorch 2.13.0).
CARGO_ENV := PATH="$(VENV)/bin:$$PATH" VIRTUAL_ENV="$(VENV)" LIBTORCH_USE_PYTORCH=1
SO      := target/release/libtorchspark.so
JAR     := jvm-shim/target/torchspark-0.1.0.jar
MVN     := mvn -B -ntp -f jvm-shim/pom.xml
# MiniDFS + MiniYARN for the cluster tests: Maven resolves hadoop-client-minicluster here.
HARNESS_MVN := mvn -B -ntp -f tests/cluster/pom.xml
HARNESS := tests/cluster/target/torchspark-cluster-harness-0.1.0.jar

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed native jar ## idempotent: .venv, Rust release build, jar

$(VENV)/.installed: python/requirements.txt python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r python/requirements.txt
	$(PY) -m pip install -q --no-deps -e python
	touch $@

native: $(VENV)/.installed ## Rust release build of the cdylib
	$(CARGO_ENV) cargo build --release --locked
	@# The newest glibc it references: the loaders compare it with the node's before loading.
	$(PY) python/torchspark/_elf.py $(SO) > $(SO).glibc

jar: native ## the Spark jar, with the .so embedded
	$(MVN) -q -DskipTests package
	@# So that a wheel of python/ (pip install ./python) carries both.
	mkdir -p python/torchspark/lib python/torchspark/jars
	cp $(SO) python/torchspark/lib/
	cp $(JAR) python/torchspark/jars/

dist: setup ## release artifacts in dist/: the wheel (tagged with its .so's glibc need), the jar, SHA256SUMS
	$(PY) tools/dist.py --so $(SO) --jar $(JAR) --out dist

demo: setup ## the main job: ResNet-20 on digits scores 10,000 PNGs on Spark; then ImageNet transfer learning
	PYTHONUNBUFFERED=1 $(PY) examples/demo.py

test: setup dist $(HARNESS) ## every suite: cargo, Maven (JVM + Spark), pytest (PySpark, clusters, dist, notebook)
	$(CARGO_ENV) cargo test --release --locked
	$(MVN) test
	PYTHONUNBUFFERED=1 $(PY) -m pytest tests/python

test-cluster: setup $(HARNESS) ## only the cluster tests: standalone and YARN + HDFS
	PYTHONUNBUFFERED=1 $(PY) -m pytest -m cluster tests/python

$(HARNESS): tests/cluster/pom.xml $(shell find tests/cluster/src -name '*.java')
	$(HARNESS_MVN) -q package

bench: setup ## side-by-side performance, writes bench/results.md
	PYTHONUNBUFFERED=1 $(PY) tests/bench/bench.py

lint: $(VENV)/.installed ## formatters and linters: rustfmt, clippy, ruff, scalafmt + google-java-format
	$(CARGO_ENV) cargo fmt --all -- --check
	$(CARGO_ENV) cargo clippy --release --all-targets --locked -- -D warnings
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(MVN) -q spotless:check
	$(HARNESS_MVN) -q spotless:check

fmt: $(VENV)/.installed ## format everything
	cargo fmt --all
	$(VENV)/bin/ruff format .
	$(MVN) -q spotless:apply
	$(HARNESS_MVN) -q spotless:apply

clean: ## remove build outputs (keeps .venv)
	cargo clean
	rm -rf jvm-shim/target tests/cluster/target tests/fixtures/out

.PHONY: help setup native jar dist demo test test-cluster bench lint fmt clean
