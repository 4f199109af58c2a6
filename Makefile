# Every target sets up .venv itself (scripts/install.sh is idempotent).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart tune test test-fast mlflow-ui clean

install:
	scripts/install.sh

quickstart: install  ## the main job: the whole DED loop on a local Ray cluster (CPU, minutes)
	$(BIN)/ray-distill run jobs/quickstart.yaml

tune: install  ## data-budget search on the quickstart's stored generations
	$(BIN)/ray-distill tune jobs/quickstart_tune.yaml

# The suite on two pytest-xdist workers by default (TEST_WORKERS=N; 0 = one process), a test file at a time each
# (`--dist loadfile`: a file's module and session fixtures stay on one worker, e.g. the quickstart storage its later
# tests read, or the two-node Ray cluster of tests/test_submit.py), the longest files first (tests/conftest.py). One
# end-to-end job alone leaves the 2 cores ~45-50% idle (vmstat: process starts, one-CPU engines and actors, Ray
# Train's polls), which a second worker fills.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q --durations=25

test: install  ## the whole suite on CPU (unit + real Ray/vLLM/MLflow end-to-end)
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: install  ## unit tests only
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

mlflow-ui: install  ## browse the runs at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf outputs
