"""Preprocessing goldens from PIL/torchvision semantics, for the runtime's parity tests.

For each input image (and a few crops of odd sizes) it writes the RGB input and what
torchvision's transforms produce from a PIL image:
  - global: Resize((448, 448), BICUBIC) -> ToTensor -> Normalize(CLIP mean, std)   (blip2_image_eval)
  - face:   Resize((224, 224)) (bilinear) -> ToTensor                                 (MAE extractor)
  - temporal_v2: Resize((224, 224)) (bilinear) -> ToTensor -> Normalize(ImageNet)    (v2's temporal EVA)
Variants: the image, an odd-sized crop, a tall crop (upscaled), a 720x1280 portrait
frame (downscaled both ways). Pillow is the official environment's (10.1.0).
Resize is done with PIL exactly as torchvision does for PIL inputs; ToTensor is /255 in f32.

usage: python -m emollama_export.media_goldens --out DIR IMAGE...
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from .manifest import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from .tensors import write_json_atomic


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.media_goldens", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--facenet-dir", type=Path, required=True, help="extracted facenet-pytorch 2.6.0 wheel")
    ap.add_argument("images", type=Path, nargs="+")
    args = ap.parse_args(argv)
    from .faces import load_mtcnn, reference_detect

    mtcnn = load_mtcnn(args.facenet_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    mean = np.array(CLIP_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(CLIP_STD, dtype=np.float32)[:, None, None]
    imagenet_mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    imagenet_std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
    cases = []
    for path in args.images:
        full = Image.open(path).convert("RGB")
        w, h = full.size
        variants = {
            "full": full,
            "odd": full.crop((3, 5, 3 + 151, 5 + 97)),
            "tall": full.crop((0, 0, 45, min(h, 301))),
            # A phone's portrait frame, downscaled in both directions: where Pillow
            # versions differ in the order of their two passes.
            "portrait": full.resize((720, 1280), Image.BICUBIC),
        }
        for tag, img in variants.items():
            name = f"{path.stem}-{tag}"
            (args.out / f"{name}.input.rgb").write_bytes(np.asarray(img, dtype=np.uint8).tobytes())
            g = img.resize((448, 448), Image.BICUBIC)
            f = img.resize((224, 224), Image.BILINEAR)
            (args.out / f"{name}.bicubic448.rgb").write_bytes(np.asarray(g, dtype=np.uint8).tobytes())
            (args.out / f"{name}.bilinear224.rgb").write_bytes(np.asarray(f, dtype=np.uint8).tobytes())
            t = np.asarray(g, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
            t = (t - mean) / std
            (args.out / f"{name}.global.f32").write_bytes(t.astype("<f4").tobytes())
            # Emotion-LLaMA-v2's temporal frames: Resize((224, 224)) (bilinear) ->
            # ToTensor -> Normalize(ImageNet mean, std) (v2 spec §3.2).
            v = np.asarray(f, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
            v = (v - imagenet_mean) / imagenet_std
            (args.out / f"{name}.temporal_v2.f32").write_bytes(v.astype("<f4").tobytes())
            case = {"name": name, "width": img.size[0], "height": img.size[1]}
            if tag == "full":
                boxes, probs, points = reference_detect(mtcnn, np.asarray(img, dtype=np.uint8))
                case["faces"] = {"boxes": boxes, "probs": probs, "landmarks": points,
                                 "reference": "facenet-pytorch 2.6.0 MTCNN.detect (defaults, select_largest)"}
            cases.append(case)
    write_json_atomic(args.out / "index.json", {"cases": cases, "mean": CLIP_MEAN, "std": CLIP_STD})
    print(f"[media-goldens] {len(cases)} cases -> {args.out}")


if __name__ == "__main__":
    main()
