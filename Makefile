# Two commands matter: `make local` (run the service on loopback) and `make test` (every check).
# Each installs what it needs: the project virtualenv (python3.13, as Lambda runs), the SAM CLI and
# cfn-lint in their own virtualenv (they pin other boto3 versions), checkov in another (it pins its
# own boto3 and packaging), and DynamoDB Local from npm.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# python3.13: pyenv's if present (this machine kind), else whatever is on PATH.
PYTHON313 ?= $(shell (PYENV_VERSION=3.13.0 pyenv which python3.13 2>/dev/null) || command -v python3.13)
TOOLS_PYTHON ?= $(PYTHON313)
VENV := .venv
PY := $(VENV)/bin/python
SAM_VENV := .tools/sam
SAM := $(SAM_VENV)/bin/sam
CHECKOV_PYTHON ?= $(TOOLS_PYTHON)
CHECKOV_VENV := .tools/checkov
# checkov offline: no policy download, no update check, no platform mapping.
CHECKOV := BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE $(CHECKOV_VENV)/bin/checkov

export SAM_CLI_TELEMETRY := 0
export AWS_ACCESS_KEY_ID ?= testing
export AWS_SECRET_ACCESS_KEY ?= testing
export AWS_DEFAULT_REGION ?= us-east-1
# `sam build` looks for python3.13 on PATH.
export PATH := $(dir $(PYTHON313)):$(PATH)

.PHONY: help local test lint typecheck unit integration template scan bench build deploy delete clean deps generate sam-image sam-local release-check

help:
	@echo "make local   run the API on http://127.0.0.1:3000/v1/token/ (SigV4-signed) with an embedded AWS and provider emulators"
	@echo "make test    lint, type-check, unit, integration (DynamoDB Local) and template tests"
	@echo "make scan    checkov (template.yaml) and bandit (code); make test runs them too, on SAM's output as well"
	@echo "make bench   benchmarks (figures printed as name: value)"
	@echo "make build   sam build"
	@echo "make deploy  sam build, then sam deploy (--guided the first time; ENV=prod for samconfig.toml's prod)"
	@echo "make delete  sam delete the ENV's stack (ENV=default)"
	@echo "make generate  rewrite env.json and events/ from template.yaml and the catalogue"
	@echo "make sam-local  the real sam local start-api on http://127.0.0.1:3000 (Docker; embedded AWS and emulators)"
	@echo "make sam-image  a container engine and the Lambda base image for sam local (make test runs it)"
	@echo "make release-check  one version everywhere, the client wheel in dist/ (twine check), sam publish's metadata (docs/releases.md)"

$(VENV)/.installed: requirements-dev.txt layers/token_vending/requirements.txt
	@test -n "$(PYTHON313)" || { echo "python3.13 not found (pyenv install 3.13.0, or put it on PATH)"; exit 1; }
	$(PYTHON313) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(SAM_VENV)/.installed: requirements-tools.txt
	$(TOOLS_PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements-tools.txt
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(CHECKOV_PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

deps: $(VENV)/.installed $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed node_modules/.installed

local: $(VENV)/.installed
	$(PY) -m local

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy layers/token_vending/token_vending local clients/python/token_vending_client
	for f in functions/*/app.py; do $(VENV)/bin/mypy "$$f" || exit 1; done

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

integration: deps
	$(PY) -m pytest tests/integration

template: deps
	$(PY) -m pytest tests/template

scan: $(VENV)/.installed $(CHECKOV_VENV)/.installed
	@# checkov cannot read Fn::ForEach: it scans the template as CloudFormation expands it
	mkdir -p build && $(PY) -m local.template > build/expanded-template.json
	$(CHECKOV) -f build/expanded-template.json --framework cloudformation --skip-download --skip-results-upload --quiet --compact
	$(VENV)/bin/bandit -c pyproject.toml -r layers functions local -ll -q

# sam local's container engine and base image (local/sam_image.sh: Debian's docker.io and dockerd when root,
# an offline stand-in image when no registry answers; cached). Where none can be had, tests/sam is skipped
# with the reason -- except in CI, where it fails.
sam-image:
	@bash local/sam_image.sh || { if [ "$${CI:-}" = true ]; then exit 1; fi; \
	  echo "sam-image: no container engine or Lambda image here (see above); the sam local tests will be skipped"; }

sam-local: $(VENV)/.installed $(SAM_VENV)/.installed
	$(PY) -m local.sam_local

# One pytest run over every test: its exit code (including 5, "no tests collected") is the result.
test: deps lint typecheck sam-image
	$(PY) -m pytest tests

bench: $(VENV)/.installed node_modules/.installed
	$(PY) -m benchmarks

build: $(SAM_VENV)/.installed
	$(SAM) build

# `make deploy` (ENV=default): `sam deploy --config-env $(ENV)` once samconfig.toml names the environment's
# stack_name, else `sam deploy --guided`, which asks and saves the answers there. The template's Fn::ForEach
# needs SAM CLI's language extensions (samconfig.toml enables them for its environments; the variable, for a
# new one). Your own AWS credentials: the dummy ones this Makefile sets for local runs are dropped.
ENV ?= default
SAM_STACK_NAME = $(shell $(PYTHON313) -c 'import sys, tomllib; env = tomllib.load(open("samconfig.toml", "rb")).get(sys.argv[1], {}); print(next((s["parameters"]["stack_name"] for s in env.values() if isinstance(s, dict) and "stack_name" in s.get("parameters", {})), ""))' $(ENV) 2>/dev/null)
AWS_CALLER = $(if $(filter file,$(origin AWS_ACCESS_KEY_ID)),env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_DEFAULT_REGION) SAM_CLI_ENABLE_LANGUAGE_EXTENSIONS=1

deploy: $(SAM_VENV)/.installed
	$(AWS_CALLER) $(SAM) build $(if $(SAM_STACK_NAME),--config-env $(ENV))
	$(AWS_CALLER) $(SAM) deploy $(if $(SAM_STACK_NAME),--config-env $(ENV),--guided --config-env $(ENV))

delete: $(SAM_VENV)/.installed
	$(AWS_CALLER) $(SAM) delete --config-env $(ENV)

generate: $(VENV)/.installed
	$(PY) -m local.generate

# docs/releases.md: the release tests, then the caller library's wheel in dist/, checked as PyPI would.
release-check: $(VENV)/.installed $(SAM_VENV)/.installed
	$(PY) -m pytest tests/unit/test_release.py tests/template/test_release.py -q
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist clients/python
	$(PY) -m twine check --strict dist/token_vending_client-*.whl

clean:
	rm -rf $(VENV) .tools node_modules dist clients/python/build clients/python/*.egg-info .aws-sam .aws-sam-local .aws-sam-local.template.yaml .mypy_cache .ruff_cache .hypothesis
