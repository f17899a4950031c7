# Shared by the scripts: paths and logging. Source it, don't run it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Everything setup downloads or builds lives here, outside the checkout, so that a fresh
# clone on the same machine reuses it. (The binary looks here for ONNX Runtime too.)
EMOLLAMA_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/emollama"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$EMOLLAMA_CACHE/target}"
VENV="$EMOLLAMA_CACHE/venv"
PY="$VENV/bin/python"

ORT_VERSION=1.31.1
ORT_WHEEL=onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_LIB="$EMOLLAMA_CACHE/onnxruntime/$ORT_VERSION/libonnxruntime.so.$ORT_VERSION"

# llama.cpp's real LLaMA-2 vocabulary ships in the llama-cpp-python source distribution.
LCP_SDIST=llama_cpp_python-0.3.36.tar.gz
LCP_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
VOCAB_GGUF="$EMOLLAMA_CACHE/vocab/ggml-vocab-llama-spm.gguf"

# MTCNN face-detector weights (and the reference detector code) from facenet-pytorch.
FACENET_WHEEL=facenet_pytorch-2.6.0-py3-none-any.whl
FACENET_WHEEL_SHA256=ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca
FACENET_DIR="$EMOLLAMA_CACHE/facenet-pytorch-2.6.0"

# llama.cpp's own HF -> GGUF converter (same sdist): the official export uses it for the LLM.
CONVERTER_DIR="$EMOLLAMA_CACHE/llama.cpp-convert"

# The official EVA code (LAVIS's eva_vit.py, byte-identical to Emotion-LLaMA's but its
# import line): the independent reference the official export's global engine is tested
# against. Only this one file is used; the package is never installed.
LAVIS_WHEEL=salesforce_lavis-1.0.2-py3-none-any.whl
LAVIS_WHEEL_SHA256=489782efc2d98d8e878112b2758f82ac2e6c10dfcfa087db6656465c7784d49f
LAVIS_DIR="$EMOLLAMA_CACHE/lavis-1.0.2"

SYNTHETIC_DIR="$EMOLLAMA_CACHE/synthetic"
MEDIA_DIR="$EMOLLAMA_CACHE/media"

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }

verify_sha256() { # file expected
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    echo "checksum mismatch for $1: got $got, expected $2" >&2
    rm -f "$1"
    return 1
  fi
}

# A digest of files, to rebuild derived artefacts only when their sources change.
tree_digest() { (cd "$REPO_ROOT" && find "$@" -type f \( -name '*.py' -o -name '*.txt' -o -name '*.sh' \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
