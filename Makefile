# pmstore -- `make serve` runs the main job on an embedded default, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HEAP   ?= data/pmstore.heap

.PHONY: install test serve bench lint clean

$(STAMP): pyproject.toml setup.py allocator/_build.py recovery/_build.py $(wildcard allocator/csrc/*.c allocator/csrc/*.h allocator/csrc/cpython/*.c store/csrc/*.c store/csrc/*.h recovery/csrc/*.c recovery/csrc/*.h)
	PYTHON=$(PYTHON) sh tools/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/pytest -q

serve: install
	@mkdir -p $(dir $(HEAP))
	$(BIN)/pmstore serve --heap $(HEAP)   # 127.0.0.1:8080; PMSTORE_* settings apply

bench: install
	$(BIN)/python bench/redo.py --quick --json > bench-redo.json
	$(BIN)/python bench/alloc.py --quick --json > bench-alloc.json
	$(BIN)/python bench/store.py --quick --json > bench-store.json
	$(BIN)/python bench/recovery.py --quick --json > bench-recovery.json
	$(BIN)/python bench/barrier.py --quick --json > bench-barrier.json
	$(BIN)/python bench/tx.py --quick --json > bench-tx.json
	@echo "wrote bench-redo.json bench-alloc.json bench-store.json bench-recovery.json bench-barrier.json bench-tx.json (plot: $(BIN)/python bench/plot.py FILE)"

lint: install
	$(BIN)/ruff check allocator recovery store service tests bench

clean:
	rm -rf $(VENV) build *.egg-info allocator/_pmstore_c.* allocator/_fast.* recovery/_walk_c.* .pytest_cache
