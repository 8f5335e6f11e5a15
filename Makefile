# The README's two commands: `make demo` and `make test`. Both set everything up from a fresh Debian
# machine (system FFmpeg, a virtual environment, the package with all extras) before they run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds this project is tested with (served from local disk here).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo test setup system-deps lint schemas clean

# FFmpeg: torchcodec needs its shared libraries. Chromium: the rating app's browser test drives Debian's
# own browser (no browser download).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$missing; \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: system-deps $(BIN)/.installed

demo: setup
	$(BIN)/medvideocap demo --out demo-output

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check medvideocap tests benchmarks
	$(BIN)/ruff format --check medvideocap tests benchmarks

schemas: setup
	$(BIN)/python -c "from medvideocap.dataset.schema import write_json_schemas; print(*write_json_schemas('schemas'), sep='\n')"

clean:
	rm -rf demo-output .pytest_cache
