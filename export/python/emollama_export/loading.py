"""Strict reading of the official checkpoint files (spec official-export.md §9).

Every official loader uses `load_state_dict(strict=False)`, so a renamed key silently
leaves a weight at its initial value. Here every tensor of every input is either taken
by the export or ignored for a stated reason; anything left over, missing or of the
wrong shape is an `ExportError` that names the file and the key.
"""

import argparse
import re
from collections import defaultdict
from pathlib import Path

import torch


# Why whole groups of keys are ignored, shared by the files that hold them.
TRAINING_STATE = "training state (optimizer, scaler, epoch, args): not part of the model"
ROTARY = "rotary inv_freq buffer: recomputed from the config (llama.cpp skips it too)"


class ExportError(Exception):
    """A refusal: the message names the file and what is wrong with it."""


def torch_load(path: Path):
    """`torch.load` with `weights_only=True` (argparse.Namespace allowed: MAE and VideoMAE
    pickle their `args`), memory-mapped when the file is in the zip format."""
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as mmap_error:  # the legacy (non-zip) format cannot be mapped
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if "mmap" not in str(mmap_error):
                    detail = str(mmap_error).strip().splitlines()[0]
                raise ExportError(f"{path}: not a readable PyTorch checkpoint ({detail})") from e


class Inventory:
    """The tensors of one input file, each taken, ignored (with the reason) or refused."""

    def __init__(self, path: Path, tensors: dict, label: str):
        bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ExportError(f"{path}: {bad[0]!r} is not a tensor (is this the right file for {label}?)")
        self.path, self.label = path, label
        self.left = dict(tensors)
        self.used: list = []
        self.ignored: dict = defaultdict(list)

    def copy(self) -> "Inventory":
        """The same file's remaining tensors, to check against without taking them here."""
        return Inventory(self.path, dict(self.left), self.label)

    def has(self, key: str) -> bool:
        return key in self.left

    def peek(self, key: str) -> torch.Tensor:
        if key not in self.left:
            raise ExportError(f"{self.path}: missing key {key!r} ({self.label})")
        return self.left[key]

    def take(self, key: str) -> torch.Tensor:
        t = self.peek(key)
        del self.left[key]
        self.used.append(key)
        return t

    def ignore(self, pattern: str, why: str) -> None:
        rx = re.compile(pattern)
        for key in [k for k in self.left if rx.fullmatch(k)]:
            del self.left[key]
            self.ignored[why].append(key)

    def finish(self) -> None:
        if self.left:
            keys = sorted(self.left)
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise ExportError(f"{self.path}: unknown key {keys[0]!r}{more} in {self.label}: "
                              "neither used by Emotion-LLaMA nor on the list of keys it ignores")

    def report(self) -> dict:
        return {"used": sorted(self.used), "ignored": {why: sorted(keys) for why, keys in self.ignored.items()}}


def unwrap(path: Path, obj, label: str, state_keys: tuple, known: dict) -> tuple:
    """The state dict inside a training checkpoint's container, and what else it held.
    `known` maps the container's other keys to why they are ignored; others are refused."""
    if not isinstance(obj, dict):
        raise ExportError(f"{path}: expected a dict ({label}), found {type(obj).__name__}")
    found = [k for k in state_keys if k in obj]
    if not found:
        raise ExportError(f"{path}: none of {list(state_keys)} in it ({label}); keys: {sorted(obj)[:8]}")
    other = {k: known.get(k) for k in obj if k != found[0]}
    unknown = [k for k, why in other.items() if why is None]
    if unknown:
        raise ExportError(f"{path}: unknown top-level key {unknown[0]!r} in {label}")
    return obj[found[0]], other


@torch.no_grad()
def fill(module: torch.nn.Module, lookup, transforms: dict | None = None, check_only: bool = False) -> None:
    """Load every entry of `module.state_dict()` from `lookup(key) -> (Inventory, file key)`,
    checking each shape against the module (built from the files' own sizes). Tensor by
    tensor into the module's own storage: no second copy of the weights (EVA-g: 4 GB).
    `check_only`: the shapes only (a module on the meta device has no storage)."""
    transforms = transforms or {}
    for key, target in module.state_dict(keep_vars=True).items():
        inv, file_key = lookup(key)
        t = inv.take(file_key)
        if key in transforms:
            t = transforms[key](t)
        if tuple(t.shape) != tuple(target.shape):
            raise ExportError(f"{inv.path}: {file_key!r} has shape {list(t.shape)}, but the model built from "
                              f"the files' sizes needs {list(target.shape)} ({inv.label})")
        if not check_only:
            target.copy_(t)


def safetensors_shapes(path: Path) -> dict:
    """{tensor: shape} of a safetensors file, from its header: no tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, SafetensorError) as e:
        raise ExportError(f"{path}: not a readable safetensors file ({e})") from e
