"""Pre-extracted utterance features, as the official feature scripts leave them: each
encoder's output *before* its projector, one float32 vector per clip, saved by numpy as
`<clip>.npy` in one folder per modality (the official `mae_340_UTT`, `maeV_399_UTT`,
`HL-UTT`). Computed here by the synthetic export's PyTorch modules from the inputs that
`emollama analyze --dump-inputs DUMP` wrote, so a test can feed the runtime features that
are exactly its encoders' own, through PyTorch rather than through the runtime.

usage: python -m emollama_export.features --torch DIR/torch --out FEATS --clip CLIP=DUMP [--clip ...]
writes FEATS/local/CLIP.npy and FEATS/audio/CLIP.npy as [C], FEATS/temporal/CLIP.npy as
[1, C] (both shapes the official files come in). A modality whose input the dump lacks
(no face found, no audio track) gets an all-zero feature: its projector makes the
zero-feature row of it, which is the row the runtime uses without that input.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from .projectors import PROJECTORS, projector_name
from .reference import load
from .synthetic import LLM, build_engines

# (modality, the dumped input it needs, the saved shape)
MODALITIES = (("local", "faces", "vector"), ("temporal", "clip", "row"), ("audio", "waveform", "vector"))
PROJECTOR_OF = {modality: k for k, modality, _ in PROJECTORS}


@torch.no_grad()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.features", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch", type=Path, required=True, help="the torch/ folder written by the synthetic export")
    ap.add_argument("--clip", action="append", required=True, metavar="CLIP=DUMP",
                    help="a clip's name (the .npy files' stem) and the folder emollama analyze --dump-inputs wrote")
    ap.add_argument("--out", type=Path, required=True, help="features root: local/, temporal/, audio/ under it")
    args = ap.parse_args(argv)
    modules = build_engines(LLM["hidden"])
    for name, module in modules.items():
        module.load_state_dict(torch.load(args.torch / f"{name}.pt"))
    for clip in args.clip:
        name, _, dump = clip.partition("=")
        for modality, input_name, shape in MODALITIES:
            x = load(Path(dump), input_name)
            width = getattr(modules[modality], projector_name(PROJECTOR_OF[modality])).in_features
            feature = (np.zeros(width, np.float32) if x is None
                       else modules[modality].utterance(x)[0].numpy().astype(np.float32))  # [C]
            folder = args.out / modality
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.npy.partial"
            with open(tmp, "wb") as f:
                np.save(f, feature if shape == "vector" else feature[None, :])
            tmp.replace(folder / f"{name}.npy")
            print(f"[features] {modality}: {folder / name}.npy {list(feature.shape)}")


if __name__ == "__main__":
    main()
