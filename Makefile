## torchspark — one command per habit. `make demo` and `make test` do all set-up themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Independent set-up steps overlap on a fresh machine: the 3.5 venv's and the cluster harness's
# downloads run while cargo compiles. A recipe's own lines (the suites) still run one by one.
MAKEFLAGS += --jobs=2
# pip keeps no copy of what it downloads (~3 GB of torch and CUDA wheels on a fresh machine): a full
# disk stopped a CI run's set-up once, and the Makefile never relies on pip's cache anyway.
export PIP_NO_CACHE_DIR := 1

VENV    := $(CURDIR)/.venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
# torch-sys builds against the venv's torch (libtorch 2.13.0); cargo runs its own jobs, not make's jobserver.
CARGO_ENV := MAKEFLAGS= PATH="$(VENV)/bin:$$PATH" VIRTUAL_ENV="$(VENV)" LIBTORCH_USE_PYTORCH=1
SO      := target/release/libtorchspark.so
# One jar per Spark line, same classes and the same .so inside. JAR is the default line (4.1).
# The release version, in one place.
VERSION := $(shell cat VERSION)
JAR     := jvm-shim/target/torchspark-spark4.1_2.13-$(VERSION).jar
JAR35   := jvm-shim/target/torchspark-spark3.5_2.12-$(VERSION).jar
MVN     := mvn -B -ntp -f jvm-shim/pom.xml -Drevision=$(VERSION)
# MiniDFS + MiniYARN for the cluster tests: Maven resolves hadoop-client-minicluster here.
HARNESS_MVN := mvn -B -ntp -f tests/cluster/pom.xml
HARNESS := tests/cluster/target/torchspark-cluster-harness-0.1.0.jar
MVN35   := $(MVN) -Pspark-3.5 -Pscala-2.12
# pyspark 3.5 in a second venv; it borrows the main venv's libtorch instead of a second torch.
# It runs on Python 3.10, the oldest torchspark supports (the main venv has 3.11): python3.10 on
# PATH or pyenv's 3.10.x, else $(PYTHON) with a note (set PYTHON310=/path/to/python3.10).
VENV35  := $(CURDIR)/.venv-spark35
PY35    := $(VENV35)/bin/python
PY310_OK := -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))'
ifndef PYTHON310
PYTHON310 := $(firstword $(foreach p,python3.10 $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.10*/bin/python3.10),$(shell $(p) $(PY310_OK) 2>/dev/null && command -v $(p))))
endif
# The fuzz pass's seed corpus (tests/fixtures/make_corpus.py; seconds, no download).
CORPUS  := tests/fixtures/out/corpus/manifest.json
# The general models' proofs (tests/fixtures/make_general_fixtures.py; ~20 s, no download).
GENERAL := tests/fixtures/out/general/manifest.json
# The text models' proofs: all-MiniLM-L6-v2 from its package, sentence-transformers the oracle
# (tests/fixtures/make_text_fixtures.py; ~20 s, no download), and the text classifiers
# (make_textcls_fixtures.py, which it runs; ~30 s).
TEXT    := tests/fixtures/out/text/text_expected.json
# The limits' models, tokenizers and Python's ids (tests/fixtures/make_limit_fixtures.py; ~10 s).
LIMITS  := tests/fixtures/out/limits/limits_expected.json
# torch without its CUDA wheels on a machine with no NVIDIA GPU (no /proc/driver/nvidia, no
# nvidia-smi): the pins in TORCH_PINS, --no-deps (docs/install-node.md). GPU=1 or
# TORCHSPARK_NODE=gpu: torch with its CUDA wheels; TORCHSPARK_NODE=cpu forces the CPU set.
TORCH_PINS := python/torchspark/data/torch-cpu-python.txt
TORCHSPARK_NODE ?= $(if $(GPU),gpu,$(if $(wildcard /proc/driver/nvidia)$(shell command -v nvidia-smi),gpu,cpu))
TORCH_INSTALL = $(if $(filter gpu,$(TORCHSPARK_NODE)),-c python/torchspark/data/torch-cpu.txt torch,--no-deps -r $(TORCH_PINS))
LIBTORCH = $$($(PY) -c "import importlib.util as u,os;print(os.path.join(os.path.dirname(u.find_spec('torch').origin),'lib'))")

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(VENV35)/.installed native jar ## idempotent: .venv, .venv-spark35, Rust build, both jars

$(VENV)/.installed: python/requirements.txt python/requirements-nodeps.txt python/pyproject.toml $(wildcard python/torchspark/data/torch-*.txt)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r python/requirements.txt
	@# torch before the packages that depend on it (requirements-nodeps.txt, --no-deps).
	@echo "torch for a $(TORCHSPARK_NODE) machine ($(if $(filter gpu,$(TORCHSPARK_NODE)),with,without) its CUDA wheels)"
	$(PY) -m pip install -q $(TORCH_INSTALL)
	$(PY) -m pip install -q --no-deps -r python/requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e python
	touch $@

$(VENV35)/.installed: python/requirements-spark35.txt python/pyproject.toml
	@test -n "$(PYTHON310)" || echo "note: no Python 3.10 (python3.10 on PATH or pyenv's 3.10.x):" \
	  ".venv-spark35 uses $(PYTHON), so the 3.5 suite does not cover Python 3.10" >&2
	@# A venv of another Python (an older set-up's 3.11) is made again.
	if test -x $(PY35) && test -n "$(PYTHON310)" && ! $(PY35) $(PY310_OK); then rm -rf $(VENV35); fi
	test -x $(PY35) || $(or $(PYTHON310),$(PYTHON)) -m venv $(VENV35)
	$(PY35) -m pip install -q --upgrade pip
	$(PY35) -m pip install -q -r python/requirements-spark35.txt
	$(PY35) -m pip install -q --no-deps -e python
	touch $@

native: $(VENV)/.installed ## Rust release build of the cdylib
	$(CARGO_ENV) cargo build --release --locked
	@# The newest glibc it references: the loaders compare it with the node's before loading.
	$(PY) python/torchspark/_elf.py $(SO) > $(SO).glibc

# After the harness: two Maven processes must not write to one local repository at once.
jar: native | $(HARNESS) ## both Spark jars (4.1/Scala 2.13 and 3.5/Scala 2.12), with the .so embedded
	$(MVN) -q -DskipTests package
	$(MVN35) -q -DskipTests package
	@# So that a wheel of python/ (pip install ./python) carries the .so and both jars.
	mkdir -p python/torchspark/lib python/torchspark/jars
	rm -f python/torchspark/jars/torchspark-*.jar
	cp $(SO) python/torchspark/lib/
	cp $(JAR) $(JAR35) python/torchspark/jars/

dist: setup ## release artifacts in dist/: the wheel (tagged with its .so's glibc need), both jars, SHA256SUMS, dist/maven
	$(PY) tools/dist.py --so $(SO) --jar $(JAR) --jar $(JAR35) --out dist
	@# dist/maven: both lines' jars as `mvn deploy` lays them out, with the flattened POM and the
	@# sources and ScalaDoc jars (-Prelease); nothing is installed into ~/.m2 (docs/install-maven.md).
	$(MVN) -q -DskipTests -Prelease package
	$(MVN35) -q -DskipTests -Prelease package
	$(PY) tools/maven_repo.py --jar dist/$(notdir $(JAR)) --jar dist/$(notdir $(JAR35)) --out dist/maven

demo: setup $(TEXT) ## the main job: ResNet-20 on digits scores 10,000 PNGs on Spark; then ImageNet transfer learning
	PYTHONUNBUFFERED=1 $(PY) examples/demo.py

test: setup dist $(HARNESS) $(CORPUS) $(GENERAL) $(TEXT) $(LIMITS) ## every suite: cargo, Maven on both Spark lines, pytest (4.1, clusters, dist, notebook, Connect, 3.5), the docs site
	@# The docs site, strict (seconds; `make docs` adds the ScalaDoc): a broken link or a stale API name fails.
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir build/docs-check
	$(CARGO_ENV) TORCHSPARK_FUZZ_SECONDS=20 cargo test --release --locked
	@# About a minute of short processes that exit, fork and close models with passes in flight
	@# (docs/engine.md#lifecycle): any signal, unexpected exit status or hang fails.
	$(CARGO_ENV) PYTHONUNBUFFERED=1 $(PY) tools/stress.py --seconds 60
	$(MVN) test
	$(MVN35) test
	PYTHONUNBUFFERED=1 $(PY) -m pytest tests/python -m "not slow" --durations=12
	@# Its own process: a Connect session turns the whole interpreter into a Connect client.
	PYTHONUNBUFFERED=1 $(PY) -m pytest tests/connect --durations=5
	$(MAKE) --no-print-directory test-spark35

docs: $(VENV)/.installed ## the docs site (mkdocs, strict) into site/, with the ScalaDoc in site/scaladoc
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site
	$(MVN) -q generate-sources scala:doc
	rm -rf site/scaladoc
	cp -r jvm-shim/target/site/scaladocs site/scaladoc

# The DataFrame API, the Python-worker paths, bad input, UDFs, spark-submit, configure(builder)
# and NativeModel on pyspark 3.5 and Python 3.10.
test-spark35: setup ## pytest on pyspark 3.5 and Python 3.10 (.venv-spark35, the 3.5 jar)
	PYTHONUNBUFFERED=1 TORCHSPARK_LIBTORCH_DIR=$(LIBTORCH) TORCHSPARK_FIXTURE_PYTHON=$(PY) \
	  $(PY35) -m pytest tests/python/test_spark.py tests/python/test_spark_lines.py tests/python/test_errors.py \
	  tests/python/test_saved_pipelines.py tests/python/test_native_model.py tests/python/test_maven.py \
	  tests/python/test_sql_conf.py -k "not bf16"

test-cluster: setup $(HARNESS) ## only the cluster tests: standalone and YARN + HDFS
	PYTHONUNBUFFERED=1 $(PY) -m pytest -m cluster tests/python

$(CORPUS): tests/fixtures/make_corpus.py | $(VENV)/.installed
	$(PY) tests/fixtures/make_corpus.py

$(GENERAL): tests/fixtures/make_general_fixtures.py | $(VENV)/.installed
	$(PY) tests/fixtures/make_general_fixtures.py

$(TEXT): tests/fixtures/make_text_fixtures.py tests/fixtures/make_textcls_fixtures.py python/torchspark/export_text.py | $(VENV)/.installed
	$(PY) tests/fixtures/make_text_fixtures.py

$(LIMITS): tests/fixtures/make_limit_fixtures.py $(TEXT) | $(VENV)/.installed
	$(PY) tests/fixtures/make_limit_fixtures.py

# The lifecycle stress of `make test`, 200 runs of each target: every cargo test binary and the
# scripts that exit or fork with passes in flight (about 8 hours on 2 cores; STRESS_RUNS and
# STRESS_TARGETS, e.g. boundary,lifecycle,py-exit,py-fork, make it shorter).
stress: setup ## 200 consecutive runs of every Rust test binary and of scripts that exit or fork with passes in flight
	$(CARGO_ENV) PYTHONUNBUFFERED=1 $(PY) tools/stress.py --runs $${STRESS_RUNS:-200} \
	  --targets $${STRESS_TARGETS:-rust,py-exit,py-fork}

# The 60 s pass of `make test` (rust/core/tests/fuzz.rs), longer and with a new seed each run.
fuzz: $(CORPUS) ## fuzz decode + preprocess for TORCHSPARK_FUZZ_SECONDS (600); see docs/fuzzing.md
	test -f tests/fixtures/out/resnet20.pt || $(PY) tests/fixtures/make_fixtures.py
	$(CARGO_ENV) TORCHSPARK_FUZZ_SECONDS=$${TORCHSPARK_FUZZ_SECONDS:-600} \
	  TORCHSPARK_FUZZ_SEED=$${TORCHSPARK_FUZZ_SEED:-random} \
	  cargo test --release --locked -p torchspark-core --test fuzz -- --nocapture

$(HARNESS): tests/cluster/pom.xml $(shell find tests/cluster/src -name '*.java')
	$(HARNESS_MVN) -q package

bench: setup $(TEXT) ## side-by-side performance (tests/bench/results.md, general.md, text.md, mlflow.md), then the soak (soak.md)
	PYTHONUNBUFFERED=1 $(PY) tests/bench/bench.py
	PYTHONUNBUFFERED=1 $(PY) tests/bench/general_bench.py
	PYTHONUNBUFFERED=1 $(PY) tests/bench/text_bench.py
	PYTHONUNBUFFERED=1 $(PY) tests/bench/mlflow_bench.py
	@# Checks too slow for make test's 25 minutes (pytest -m slow): the YARN executor kill, the
	@# YARN Scala cluster-mode job, the standalone PySpark driver, the wheel in a fresh venv.
	PYTHONUNBUFFERED=1 $(PY) -m pytest tests/python -m slow --durations=5
	PYTHONUNBUFFERED=1 $(PY) tests/bench/soak.py

lint: $(VENV)/.installed ## formatters and linters: rustfmt, clippy, ruff, scalafmt + google-java-format
	$(CARGO_ENV) cargo fmt --all -- --check
	$(CARGO_ENV) cargo clippy --release --all-targets --locked -- -D warnings
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) tools/check_import_circles.py
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

.PHONY: help setup native jar dist demo test test-cluster test-spark35 stress fuzz bench lint fmt clean
