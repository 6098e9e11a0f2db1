# Verbs that the README and CI call verbatim. Every verb installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_OUT := service/api/v1

.PHONY: install proto proto-check run test fuzz lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Generated code is committed; this regenerates it with the pinned grpcio-tools, with
# mypy-protobuf .pyi stubs (stricter than --pyi_out) for messages and services.
proto: $(STAMP)
	rm -f $(PROTO_OUT)/*_pb2*.py $(PROTO_OUT)/*_pb2*.pyi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=. --mypy_out=. --grpc_python_out=. --mypy_grpc_out=. \
		protos/service/api/v1/*.proto

# Fails when the committed generated code differs from what `make proto` produces.
proto-check: proto
	git diff --exit-code -- $(PROTO_OUT)

run: $(STAMP)
	$(BIN)/stackone-connect serve

test: $(STAMP)
	$(BIN)/pytest

# The 10,000-request property-based runs against the real gateway and gRPC server.
fuzz: $(STAMP)
	$(BIN)/pytest --fuzz -m fuzz tests/test_webhook_fuzz.py tests/test_grpc_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache var

# --- StackOne's own SDK as the contract (tests/sdk) -----------------------------------
# The pinned @stackone/stackone-client-ts that tests/test_sdk_conformance.py runs with
# Node against the emulator and the client's recorded requests. `install` and `test` get it.
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
