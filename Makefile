# The single entry point for set-up, runs, tests and the regression gate.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CI_RUNS := results/ci-runs
BASELINE := results/baselines/ci-cpu.csv
# One torch thread for the CI-budget runs, as in the tests, so baseline and check add up alike.
# The built-in methods, from the method registry (evaluated where used, after install), less the two whose dense
# covariance the CI tasks' networks exceed (gsm, bam: at most 4,096 weights; their own tests gate them).
CI_DENSE_ONLY := bam gsm
CI_METHODS = $(filter-out $(CI_DENSE_ONLY),$(shell $(BIN)/bnnbench list methods --names --built-in))
CI_TASKS := digits-mlp ts-co2-mlp digits-fidelity digits-overconfident
# digits-vit's Laplace rows run at the task's default budget: at its ci budget (3 epochs) the ViT is at chance.
CI_VIT_METHODS := map laplace-ll laplace-subnet sampled-laplace
# A task with a committed tuned file (tasks/tuned/, made by `bnnbench tune --methods all`) runs with its settings.
CI_RUN = for task in $(CI_TASKS); do tuned=""; test -f tasks/tuned/$$task.toml && tuned="--tuned tasks/tuned/$$task.toml"; \
	for method in $(CI_METHODS); do OMP_NUM_THREADS=1 $(BIN)/bnnbench run --task $$task --method $$method --seed 0..2 \
	--budget ci --quiet --results-dir $(CI_RUNS) $$tuned || exit 1; done; done; \
	for method in $(CI_VIT_METHODS); do OMP_NUM_THREADS=1 $(BIN)/bnnbench run --task digits-vit --method $$method \
	--seed 0..2 --quiet --results-dir $(CI_RUNS) || exit 1; done

export HF_HUB_OFFLINE := 1

.PHONY: install run test test-all report-check lint fmt baseline check bench gpu-check clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(INSTALLED)

install: $(INSTALLED)

run: install  ## the embedded default benchmark, then its leaderboard
	$(BIN)/bnnbench run --task digits-mlp --method map --seed 0..2
	$(BIN)/bnnbench compare --task digits-mlp

test: install  ## fast tests (slow and gpu ones are deselected in pyproject.toml)
	$(BIN)/pytest -n 2 -q

test-all: install
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	$(BIN)/pytest -n 2 -q -m "not gpu and not browser"

report-check: install  ## a report rendered in headless Chromium: every section there, every image decoded (keeps report-check/)
	@command -v chromium >/dev/null || { echo "report-check needs Debian's chromium: apt-get install chromium"; exit 1; }
	rm -rf report-check && mkdir report-check
	REPORT_CHECK_OUT=report-check $(BIN)/pytest -q -m browser tests/test_report.py

lint: install  ## ruff, the package's layers (pyproject's import-linter contracts), nothing newer than Python 3.10
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/vermin --target=3.10- --violations --eval-annotations --no-tips --no-config-file bnnbench

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

baseline: install  ## regenerate the committed regression baseline (say why in the commit message)
	rm -rf $(CI_RUNS)
	$(CI_RUN)
	$(BIN)/bnnbench baseline --results-dir $(CI_RUNS) --out $(BASELINE)

check: install  ## CI-budget runs, then the regression check against the committed baseline
	rm -rf $(CI_RUNS)
	$(CI_RUN)
	$(BIN)/bnnbench check --baseline $(BASELINE) --results-dir $(CI_RUNS)

bench: install  ## cost per epoch (VI, ensembles, dropout, SWAG, rank-1) and of Laplace's post-hoc fit, relative to map (one thread); sweep overhead
	for task in digits-mlp digits-cnn digits-vit; do \
		OMP_NUM_THREADS=1 $(BIN)/python benchmarks/vi_cost.py --task $$task --epochs 5 --repeats 3 && \
		OMP_NUM_THREADS=1 $(BIN)/python benchmarks/laplace_cost.py --task $$task --epochs 5 --repeats 3 && \
		OMP_NUM_THREADS=1 $(BIN)/python benchmarks/others_cost.py --task $$task --epochs 5 --repeats 3 || exit 1; done
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/sweep_overhead.py --budget ci --repeats 5
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/sweep_overhead.py --budget default --repeats 3

gpu-check: install  ## the GPU check on a CUDA machine (<= 8 min), report in docs/gpu.md; ARGS="--device cpu --tiny" anywhere
	$(BIN)/bnnbench doctor --gpu $(ARGS)

clean:
	rm -rf $(CI_RUNS) results/runs .pytest_cache report report-check
