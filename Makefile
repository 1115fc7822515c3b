# The two commands a user needs: `make demo` and `make test`. Both install what is
# missing first (scripts/setup.sh), so they work on a fresh Debian machine with Rust.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
CARGO ?= cargo
KILN := target/debug/kiln

.PHONY: setup build demo test check-cuda bench docs clean-runs

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace --bins

# The quick-start job: 2 data-parallel ranks under mpirun, live progress,
# checkpoints and report in runs/quickstart/.
demo: build
	rm -rf runs/quickstart
	$(KILN) run examples/quickstart.toml --ranks 2

test: setup
	bash scripts/slurm-cluster.sh start
	$(CARGO) build --workspace --bins --tests
	status=0; $(CARGO) test --workspace --lib --bins --tests --no-fail-fast 2>&1 | tee target/test-output.log || status=$$?; \
	$(MAKE) check-cuda || status=1; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.log; \
	exit $$status

# GPU code paths must keep compiling on machines without a GPU, and the NCCL
# backend must answer a missing GPU with an error, not a panic.
check-cuda:
	$(CARGO) check --workspace --all-targets --features cuda
	$(CARGO) test -p kiln-cluster --features cuda --test nccl_without_gpu 2>&1 | tee -a target/test-output.log

bench: build
	bash bench/run-all.sh

docs:
	mdbook build docs

clean-runs:
	rm -rf runs
