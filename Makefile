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

# TEST_WORKERS=2: two pytest-xdist workers, a test file at a time each (a file's module fixtures stay on one
# worker), the longest files first (tests/conftest.py; --no-loadscope-reorder keeps that order, where xdist
# would start the files with the most tests first): 37 min vs ~45 serial on 2 cores, but a two-node Ray test
# once lost its worker node while the other worker ran a job, so the default stays one process for now.
TEST_WORKERS ?= 0

test: install  ## the whole suite on CPU (unit + real Ray/vLLM/MLflow end-to-end)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

test-fast: install  ## unit tests only
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

mlflow-ui: install  ## browse the runs at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs
