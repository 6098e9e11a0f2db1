# Verbs that the README and CI call verbatim. Every verb installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The contract's generated Python is its own distribution (clients/api, package
# stackone_connect.v1), which the service and the Python client (clients/python) use.
API_DIR := clients/api
CLIENT_DIR := clients/python
PROTO_OUT := $(API_DIR)/stackone_connect/v1

.PHONY: install proto proto-check run test fuzz lint bench wheel-check clean

$(STAMP): pyproject.toml $(API_DIR)/pyproject.toml $(CLIENT_DIR)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e $(API_DIR) -e $(CLIENT_DIR) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Generated code is committed; this regenerates it with the pinned grpcio-tools, with
# mypy-protobuf .pyi stubs (stricter than --pyi_out) for messages and services.
proto: $(STAMP)
	rm -f $(PROTO_OUT)/*_pb2*.py $(PROTO_OUT)/*_pb2*.pyi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=$(API_DIR) --mypy_out=$(API_DIR) \
		--grpc_python_out=$(API_DIR) --mypy_grpc_out=$(API_DIR) \
		protos/stackone_connect/v1/*.proto

# Fails when the committed generated code differs from what `make proto` produces.
proto-check: proto
	git diff --exit-code -- $(PROTO_OUT)

# Records the contract `buf breaking` holds every later change to: run it when a version
# is released, never to let a breaking change through.
.PHONY: proto-baseline
proto-baseline: $(STAMP)
	$(BIN)/buf build --exclude-source-info -o protos/baseline.binpb

run: $(STAMP)
	$(BIN)/stackone-connect serve

# Two workers (pytest-xdist): most tests wait on servers and subprocesses, so two share the
# two cores of our machines well (8 min serial, 4.5 min so); the ratio checks compare a
# baseline measured beside them in the same test, so they hold under that load.
test: $(STAMP)
	$(BIN)/pytest -n 2

# The 10,000-request property-based runs against the real gateway and gRPC server.
fuzz: $(STAMP)
	$(BIN)/pytest --fuzz -m fuzz tests/gateway/test_webhook_fuzz.py tests/rpc/test_grpc_fuzz.py

# buf (buf.yaml) guards the proto contract: its lint rules, its format, and no change that
# breaks a caller of the contract recorded in protos/baseline.binpb. The deployment files
# are checked offline against bundled schemas (tests/repository/test_deploy.py runs the same three):
# Kubernetes $(KUBERNETES_VERSION) (strict: no unknown field) and the compose specification.
KUBERNETES_VERSION := 1.37.0
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/buf breaking --against protos/baseline.binpb
	$(BIN)/yamllint --strict deploy .yamllint
	$(BIN)/kubernetes-validate --strict --quiet -k $(KUBERNETES_VERSION) deploy/kubernetes/*.yaml
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml

bench: $(STAMP)
	$(BIN)/python -m tests.bench

# What an operator deploys: the wheel built from pyproject.toml, installed alone (with the
# API's and the client's) into a fresh venv outside the repository, serves and answers
# health (deploy/smoke.py). What a caller installs: the client's wheel with the API's,
# alone in another fresh venv, holds none of the service's dependencies and calls that
# serve (deploy/client_smoke.py).
WHEEL_DIR := var/wheel-check
wheel-check: $(STAMP)
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir $(WHEEL_DIR)/dist . $(API_DIR) $(CLIENT_DIR)
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/pip install --quiet $(WHEEL_DIR)/dist/*.whl
	$(PYTHON) -m venv $(WHEEL_DIR)/client-venv
	$(WHEEL_DIR)/client-venv/bin/pip install --quiet $(WHEEL_DIR)/dist/stackone_connect_api-*.whl \
		$(WHEEL_DIR)/dist/stackone_connect_client-*.whl
	cd $(WHEEL_DIR) && venv/bin/python $(CURDIR)/deploy/smoke.py client-venv/bin/python

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache var

# --- StackOne's own SDK as the contract (tests/sdk) -----------------------------------
# The pinned @stackone/stackone-client-ts that
# tests/stackone/test_contract_sdk_428_in_node.py runs with Node against the emulator and the
# client's recorded requests. `install` and `test` get it.
SDK_DIR := tests/sdk
SDK_STAMP := $(SDK_DIR)/node_modules/.installed

$(SDK_STAMP): $(SDK_DIR)/package.json $(SDK_DIR)/package-lock.json
	cd $(SDK_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(SDK_STAMP)

install: $(SDK_STAMP)
test: $(SDK_STAMP)

.PHONY: clean-sdk
clean: clean-sdk
clean-sdk:
	rm -rf $(SDK_DIR)/node_modules

# ---- The real Hub in a browser (examples/web, make demo, the browser tests) -------------
# Kept apart from the verbs above; `install` and `test` gain `browser` as a prerequisite.
HUB_DIR := examples/web
HUB_JS := $(HUB_DIR)/node_modules/@stackone/hub/dist/webcomponent.js
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -y -qq

.PHONY: browser demo

# Exactly the @stackone/hub of package-lock.json. Its React peers are bundled into the web
# component the example serves, hence --legacy-peer-deps.
$(HUB_JS): $(HUB_DIR)/package-lock.json
	command -v npm >/dev/null || $(APT_GET) install nodejs npm
	cd $(HUB_DIR) && npm ci --legacy-peer-deps --no-audit --no-fund
	touch $@

# Debian's Chromium, which Playwright drives (Playwright's own browser builds are not used);
# the package lists are refreshed only when the install cannot find it.
browser: $(HUB_JS)
	command -v chromium >/dev/null || $(APT_GET) install chromium \
		|| { $(APT_GET) update && $(APT_GET) install chromium; }

install test: browser

# The service (with the bundled emulator unless STACKONE_CONNECT_API_KEY is set) and the
# example app; prints the URL to open.
demo: $(STAMP) $(HUB_JS)
	$(BIN)/python -m examples.web.demo

# ---- The TypeScript client (clients/typescript) -----------------------------------------
# Its messages and service are generated at install, from the protos, by buf with the
# protoc-gen-es of package-lock.json (gen/ is not committed), then compiled (and so
# type-checked) with its tsc; tests/client/test_typescript_client.py runs its suite.
TS_DIR := clients/typescript
TS_STAMP := $(TS_DIR)/node_modules/.installed
TS_BUILT := $(TS_DIR)/dist/.built
TS_SOURCES := $(wildcard protos/stackone_connect/v1/*.proto $(TS_DIR)/proto/google/rpc/*.proto \
	$(TS_DIR)/src/*.ts $(TS_DIR)/test/*.ts) $(TS_DIR)/buf.gen.yaml $(TS_DIR)/tsconfig.json

$(TS_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(TS_BUILT): $(STAMP) $(TS_STAMP) $(TS_SOURCES)
	cd $(TS_DIR) && $(CURDIR)/$(BIN)/buf generate && rm -rf dist && node_modules/.bin/tsc -p .
	touch $@

.PHONY: typescript
typescript: $(TS_BUILT)
install test lint: typescript

.PHONY: clean-typescript
clean: clean-typescript
clean-typescript:
	rm -rf $(TS_DIR)/node_modules $(TS_DIR)/gen $(TS_DIR)/dist
