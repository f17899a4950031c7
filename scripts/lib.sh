# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are for the scripts that source this file
# Shared by the scripts: paths and logging. Source it, don't run it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Everything setup downloads or builds lives here, outside the checkout, so that a fresh
# clone on the same machine reuses it. (The binary looks here for ONNX Runtime too.)
EMOLLAMA_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/emollama"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$EMOLLAMA_CACHE/target}"
# One build for everything: the tests, the demo and the .deb run the same release binary
# (a second profile would build llama.cpp twice, ~8 minutes on 2 cores).
EMOLLAMA_BIN="$CARGO_TARGET_DIR/release/emollama"
VENV="$EMOLLAMA_CACHE/venv"
PY="$VENV/bin/python"

ORT_VERSION=1.31.1
ORT_WHEEL=onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_LIB="$EMOLLAMA_CACHE/onnxruntime/$ORT_VERSION/libonnxruntime.so.$ORT_VERSION"
# The aarch64 CPU build, for the arm64 package made here (scripts/package --target arm64).
ORT_WHEEL_ARM64=onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_aarch64.whl
ORT_WHEEL_ARM64_SHA256=da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3
ORT_LIB_ARM64="$EMOLLAMA_CACHE/onnxruntime/$ORT_VERSION-aarch64/libonnxruntime.so.$ORT_VERSION"

# llama.cpp's real LLaMA-2 vocabulary ships in the llama-cpp-python source distribution.
LCP_SDIST=llama_cpp_python-0.3.36.tar.gz
LCP_SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
VOCAB_GGUF="$EMOLLAMA_CACHE/vocab/ggml-vocab-llama-spm.gguf"

# MTCNN face-detector weights (and the reference detector code) from facenet-pytorch.
FACENET_WHEEL=facenet_pytorch-2.6.0-py3-none-any.whl
FACENET_WHEEL_SHA256=ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca
FACENET_DIR="$EMOLLAMA_CACHE/facenet-pytorch-2.6.0"

# Whisper's multilingual tokenizer ranks (tiktoken) and its language list, from the
# openai-whisper source distribution (MIT): the ASR test model's real tokenizer.
WHISPER_SDIST=openai_whisper-20250625.tar.gz
WHISPER_SDIST_SHA256=37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96
WHISPER_ASSETS="$EMOLLAMA_CACHE/openai-whisper-20250625"

# llama.cpp's own HF -> GGUF converter (same sdist): the official export uses it for the LLM.
CONVERTER_DIR="$EMOLLAMA_CACHE/llama.cpp-convert"

# The official EVA code (LAVIS's eva_vit.py, byte-identical to Emotion-LLaMA's but its
# import line): the independent reference the official export's global engine is tested
# against. Only this one file is used; the package is never installed.
LAVIS_WHEEL=salesforce_lavis-1.0.2-py3-none-any.whl
LAVIS_WHEEL_SHA256=489782efc2d98d8e878112b2758f82ac2e6c10dfcfa087db6656465c7784d49f
LAVIS_DIR="$EMOLLAMA_CACHE/lavis-1.0.2"

# Debian packaging: cargo-deb, built once into the cache.
CARGO_DEB_VERSION=3.8.0
CARGO_DEB="$EMOLLAMA_CACHE/tools/bin/cargo-deb"

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

# ONNX Runtime's library out of its PyPI wheel: install_ort PLATFORM WHEEL SHA256 DEST.
install_ort() {
  local platform=$1 wheel=$2 sha=$3 dest=$4
  [ -f "$dest" ] && { note "present: $dest"; return 0; }
  mkdir -p "$EMOLLAMA_CACHE/downloads" "$(dirname "$dest")"
  if [ ! -f "$EMOLLAMA_CACHE/downloads/$wheel" ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform "$platform" "onnxruntime==$ORT_VERSION" -d "$EMOLLAMA_CACHE/downloads"
  fi
  verify_sha256 "$EMOLLAMA_CACHE/downloads/$wheel" "$sha"
  unzip -p "$EMOLLAMA_CACHE/downloads/$wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" > "$dest.partial"
  mv "$dest.partial" "$dest"
  note "installed $dest"
}

# Debian packages, installed when missing: need_debs PKG...
need_debs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    note "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    note "all present"
  fi
}

# A Debian 12 root file system for the package tests, with what the package depends on
# (FFmpeg's libraries, OpenMP), made once by debootstrap and cached as a tarball:
# bookworm_rootfs ARCH DIR. A foreign ARCH runs its second stage under qemu (binfmt).
ROOTFS_PACKAGES=systemd,systemd-sysv,adduser,ca-certificates,libavcodec59,libavformat59,libavutil57,libswscale6,libswresample4,libavdevice59,libgomp1,libstdc++6
bookworm_rootfs() {
  local arch=$1 dir=$2 digest tarball
  digest=$(printf '%s' "$ROOTFS_PACKAGES" | sha256sum | cut -c1-8)
  tarball="$EMOLLAMA_CACHE/rootfs/bookworm-$arch-$digest.tar"
  if [ ! -f "$tarball" ]; then
    note "debootstrap bookworm $arch (first time only: about 2 minutes, 5 more for arm64 under qemu)"
    local work
    work=$(mktemp -d "$EMOLLAMA_CACHE/rootfs.XXXXXX")
    if [ "$arch" = "$(dpkg --print-architecture)" ]; then
      debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$work" http://deb.debian.org/debian >/dev/null
    else
      debootstrap --arch="$arch" --foreign --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$work" http://deb.debian.org/debian >/dev/null
      chroot "$work" /debootstrap/debootstrap --second-stage >/dev/null
    fi
    rm -rf "$work/var/cache/apt/archives/"*.deb
    mkdir -p "$(dirname "$tarball")"
    tar -C "$work" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$work"
  fi
  mkdir -p "$dir"
  tar -C "$dir" -xf "$tarball"
  # A root folder made by mktemp is 0700: the service user could not even reach /lib.
  chmod 755 "$dir"
}

# qemu-aarch64 registered with binfmt_misc with the F flag, so that a chroot into an arm64
# root file system runs its binaries without the emulator inside it.
register_qemu_aarch64() {
  need_debs qemu-user-static
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf
  grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
    { echo "qemu-aarch64 is registered without the F flag: a chroot cannot find the emulator" >&2; return 1; }
}

# Run a command inside ROOT as the package's service user, with its home:
# as_service ROOT COMMAND...
as_service() {
  local root=$1
  shift
  chroot "$root" setpriv --reuid=emollama --regid=emollama --init-groups env HOME=/var/lib/emollama "$@"
}

# A digest of files, to rebuild derived artefacts only when their sources change.
tree_digest() { (cd "$REPO_ROOT" && find "$@" -type f \( -name '*.py' -o -name '*.txt' -o -name '*.sh' \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
