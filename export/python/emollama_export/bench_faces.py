"""The face benchmark (run by scripts/bench-faces, not CI): the old face search against the
new one, side by side in one run, on real clips and generated ones.

The face stage of `emollama analyze` finds the face to feed the encoders: MTCNN detection,
then alignment of the chosen face to 112x112 crops. `--face-search legacy` is the old search
(full MTCNN on every examined frame, largest face); `--face-search tracked` is the new one
(detection + tracking). For every clip and both algorithms this measures:

* speed: `analyze --mode full --preset fast --json`, RUNS times per algorithm, interleaved
  (legacy, tracked, legacy, tracked, ...) so that machine noise hits both alike. Medians of
  the face stage (`timings_ms.faces`), of the whole request (`timings_ms.total`) and of the
  process wall time measured here; the face share of the request is faces / total.
* correctness: the last run of each algorithm dumps its inputs (`--dump-inputs`), and every
  face crop it chose is checked on its source frame by INDEPENDENT detectors, methods that
  have nothing in common with MTCNN, so that a mistake of one is unlikely to be repeated by
  the other. The primary check is Google's BlazeFace (MediaPipe face detection: its
  short-range model, then its full-range model when the short-range one does not confirm),
  run here with the LiteRT interpreter (ai-edge-litert) and decoded in numpy; the second is
  OpenCV's Haar cascades, kept as a separate column for comparison (they miss many real
  faces: side lighting, tilted heads, three-quarter views). A crop is CONFIRMED when the
  detector finds, in the region around its box, a face centred inside the box and of about
  its width. A low confirmed share means the search kept a non-face (background, clothes)
  or drifted off the face. No detector finds every face (strong profiles, heavy blur, very
  dark scenes): compare the two algorithms' shares rather than read one as an absolute
  accuracy.
* what was chosen: the face track (its frames, mean MTCNN score, median width) or the reason
  why no face is used. The test-pattern clip has no face: both algorithms must say so.

Writes into WORK: faces.md (the tables), faces.json (every number, run by run and crop by
crop), sheets/CLIP.png (contact sheets: a row of sampled crops per algorithm, green border
when BlazeFace confirms, red when not) and dumps/CLIP/ALGO (the dumped inputs of the last run).

With --check-only nothing is run: the crops that an earlier run dumped into WORK are checked
again and the report is written again with the timings of WORK/faces.json (to try a change
of the checks without waiting for the analyze runs).

usage: python -m emollama_export.bench_faces --bin EMOLLAMA --bundle DIR --media-dir DIR
           [--real-clips DIR] --work DIR [--runs N] [--blazeface-dir DIR]
       python -m emollama_export.bench_faces --check-only --media-dir DIR [--real-clips DIR]
           --work DIR [--blazeface-dir DIR]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ALGORITHMS = ("legacy", "tracked")  # the order of the runs, and of the sheet rows
GENERATED_CLIPS = ("talking-face.mp4", "test-pattern.mp4")  # from MEDIA_DIR (make-media.sh)
EXPECT_FACE = {"talking-face.mp4": True, "test-pattern.mp4": False}  # checked in the summary
ANALYZE_TIMEOUT_S = 900  # one analyze run; the fast preset takes seconds

# The independent checks (see confirm_face_blazeface and confirm_face_haar): both look at the
# region around the crop's box and want a face centred inside the box and of about its width.
REGION_SCALE = 2.0  # the region cut around the box: this many times its size
WIDTH_RANGE = (0.5, 2.0)  # a detection's width, as a fraction of the box width


@dataclass(frozen=True)
class BlazeFaceSpec:
    """One BlazeFace model and the options that MediaPipe's graph gives it (mediapipe/modules/
    face_detection/face_detection_{short,full}_range.pbtxt, 0.10.14): the square input size,
    the SSD anchor layers' strides, whether each cell has a second anchor
    (interpolated_scale_aspect_ratio 1.0) and the minimum score of a detection
    (min_score_thresh)."""

    name: str
    file: str  # in BLAZEFACE_DIR; scripts/bench-faces extracts it from the mediapipe wheel
    size: int
    strides: tuple[int, ...]
    interpolated_anchor: bool
    min_score: float


# Short-range first (faces within about 2 m of the camera: a face filling half of the region
# is its case); full-range (faces up to 5 m) only when short-range confirms nothing.
BLAZEFACE_MODELS = (
    BlazeFaceSpec("short-range", "face_detection_short_range.tflite", 128, (8, 16, 16, 16), True, 0.5),
    BlazeFaceSpec("full-range", "face_detection_full_range_sparse.tflite", 192, (4,), False, 0.6),
)
BLAZEFACE_DIR = Path.home() / ".cache" / "emollama" / "blazeface"  # the default of --blazeface-dir
SCORE_CLIPPING = 100.0  # the raw scores are clipped to +-this before the sigmoid (MediaPipe's)
NMS_IOU = 0.3  # weighted non-maximum suppression: boxes overlapping more are merged (MediaPipe's)
# The score a detection needs to confirm a crop, for both models. Higher than MediaPipe's 0.5
# for short-range: on the real clips, the regions without a face that short-range takes for
# one (a shelf, a car window, the back of a head, a blurred hand) score 0.50-0.64, mostly
# under 0.6, and the faces 0.65 or more (bar tiny faces of 12-14 px).
CONFIRM_MIN_SCORE = 0.6

# The Haar cascades, the second check (see confirm_face_haar).
CHECK_FACE_PX = 120  # the region is scaled so that the face is about this wide
MIN_SIZE_FRACTION = 0.4  # the cascades' smallest face, as a fraction of the face width
SCALE_FACTOR, MIN_NEIGHBORS = 1.1, 3
CASCADES = (  # (name, file in cv2.data.haarcascades, also run on the mirrored image)
    ("frontal", "haarcascade_frontalface_default.xml", False),
    ("frontal-alt2", "haarcascade_frontalface_alt2.xml", False),
    ("profile", "haarcascade_profileface.xml", True),  # the file knows one side only
)
LUMA_TOLERANCE = 3.0  # our frame's mean luma vs the runtime's: more means another frame

# The contact sheets.
SHEET_CROPS = 10  # crops per row, sampled evenly
BORDER_PX, GAP_PX, LABEL_PX, CAPTION_PX = 4, 6, 16, 12
GREEN, RED, GREY = (0, 170, 0), (210, 0, 0), (150, 150, 150)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# The clips


def list_clips(media_dir: Path, real_clips: Path | None) -> list[dict]:
    """The real clips (sorted by name) then the generated ones."""
    clips = []
    if real_clips is not None:
        if real_clips.is_dir():
            clips += [{"name": p.name, "path": p, "real": True} for p in sorted(real_clips.glob("*.mp4"))]
        else:
            log(f"no real clips at {real_clips}: the generated clips only")
    for name in GENERATED_CLIPS:
        path = media_dir / name
        if path.is_file():
            clips.append({"name": name, "path": path, "real": False})
        else:
            log(f"missing generated clip {path} (scripts/setup makes it)")
    return clips


def probe_clip(path: Path) -> dict:
    """Width and height of the decoded (display-rotated) frames, and the duration."""
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read()
        fps = cap.get(cv2.CAP_PROP_FPS)
        frames = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    if not ok:
        return {"width": None, "height": None, "duration_s": None}
    duration = frames / fps if fps > 0 and frames > 0 else None
    return {"width": frame.shape[1], "height": frame.shape[0], "duration_s": duration}  # of the video stream


# ---------------------------------------------------------------------------------------
# Running analyze


def analyze_command(args, clip: Path, algorithm: str, dump_dir: Path | None) -> list[str]:
    cmd = [str(args.bin), "analyze", str(clip), "--bundle", str(args.bundle), "--mode", "full",
           "--preset", "fast", "--json", "--face-search", algorithm, "--log", "error"]
    if dump_dir is not None:
        cmd += ["--dump-inputs", str(dump_dir)]
    return cmd


def run_analyze(args, clip: Path, algorithm: str, dump_dir: Path | None) -> dict:
    """One analyze run: the process wall time measured here, the runtime's own face-stage
    and request times (None when absent), its `faces` object, or the error."""
    if dump_dir is not None:
        shutil.rmtree(dump_dir, ignore_errors=True)  # no stale files from an earlier run
        dump_dir.mkdir(parents=True)
    cmd = analyze_command(args, clip, algorithm, dump_dir)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ANALYZE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {ANALYZE_TIMEOUT_S} s", "dumped": dump_dir is not None}
    wall_ms = (time.perf_counter() - start) * 1000.0
    run = {"wall_ms": wall_ms, "dumped": dump_dir is not None}
    if proc.returncode != 0:
        run["error"] = f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"
        return run
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        run["error"] = f"stdout is not one JSON object ({e}): {proc.stdout[:200]!r}"
        return run
    timings = result.get("timings_ms") or {}
    run["faces_ms"] = timings.get("faces")  # absent when no face stage ran
    run["total_ms"] = timings.get("total")
    run["faces"] = result.get("faces")  # None when the request has no face stage
    return run


def run_interleaved(args, clip: dict, work: Path) -> dict[str, list[dict]]:
    """RUNS runs per algorithm, alternating the algorithms; the last one of each dumps."""
    runs = {a: [] for a in ALGORITHMS}
    for i in range(args.runs):
        last = i == args.runs - 1
        for algorithm in ALGORITHMS:
            dump_dir = work / "dumps" / clip["path"].stem / algorithm if last else None
            run = run_analyze(args, clip["path"], algorithm, dump_dir)
            if "error" in run:
                log(f"  {algorithm} run {i + 1}: FAILED: {run['error']}")
            runs[algorithm].append(run)
    return runs


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def last_faces(runs: list[dict]) -> dict | None:
    """The `faces` object of the last successful run (the dumped one, normally), with a
    warning when the runs disagree: the search should be deterministic."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return None
    if any(json.dumps(r["faces"], sort_keys=True) != json.dumps(ok[-1]["faces"], sort_keys=True) for r in ok):
        log("  warning: the runs disagree on `faces` (a nondeterministic search?)")
    return ok[-1]["faces"]


# ---------------------------------------------------------------------------------------
# The dumps


def load_dump(dump_dir: Path) -> tuple[dict, np.ndarray] | None:
    """faces.json and the aligned crops of face_crops.rgb as [n, rows, cols, 3] u8, or None
    when the run dumped no faces.json."""
    meta_path = dump_dir / "faces.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    cols, rows = meta.get("aligned_size", [112, 112])
    n = len(meta.setdefault("crops", []))
    raw_path = dump_dir / "face_crops.rgb"
    raw = np.fromfile(raw_path, dtype=np.uint8) if raw_path.is_file() else np.zeros(0, np.uint8)
    if raw.size != n * rows * cols * 3:
        log(f"  warning: {raw_path} has {raw.size} bytes, {n} crops of {cols}x{rows} need {n * rows * cols * 3}")
        n = min(n, raw.size // (rows * cols * 3))
        raw = raw[: n * rows * cols * 3]
        meta["crops"] = meta["crops"][:n]
    return meta, raw.reshape(n, rows, cols, 3)


# ---------------------------------------------------------------------------------------
# BlazeFace (MediaPipe face detection), run with LiteRT and decoded here in numpy


def ssd_anchors(spec: BlazeFaceSpec) -> np.ndarray:
    """The centres [n, 2] (x, y, in 0..1 of the input) of the model's SSD anchors, in the order
    of its outputs, as MediaPipe's SsdAnchorsCalculator makes them with the face detection
    options (anchor offset 0.5, aspect ratio 1.0, fixed_anchor_size: every anchor is 1 x 1,
    so that only its centre matters). Consecutive layers with the same stride share one grid:
    each of its cells gets one anchor per layer, two with the interpolated anchor. Short
    range: a 16x16 grid x 2 + an 8x8 grid x 6 = 896 anchors; full range: 48x48 x 1 = 2304."""
    centres = []
    layer = 0
    while layer < len(spec.strides):
        stride = spec.strides[layer]
        same = 1
        while layer + same < len(spec.strides) and spec.strides[layer + same] == stride:
            same += 1
        per_cell = same * (2 if spec.interpolated_anchor else 1)
        cells = int(np.ceil(spec.size / stride))
        coords = (np.arange(cells) + 0.5) / cells
        ys, xs = np.meshgrid(coords, coords, indexing="ij")  # rows first, then columns
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, per_cell, axis=0))
        layer += same
    return np.concatenate(centres).astype(np.float32)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """`image` scaled to fit a size x size square, its aspect ratio kept, centred on black (as
    MediaPipe's ImageToTensorCalculator: keep_aspect_ratio, BORDER_ZERO). Returns the square,
    the scale and the (x, y) offset of the image in it."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    square = np.zeros((size, size, 3), np.uint8)
    x0, y0 = (size - new_w) // 2, (size - new_h) // 2
    square[y0:y0 + new_h, x0:x0 + new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return square, scale, (x0, y0)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x1, y1, x2, y2) box with each of `boxes` [n, 4]."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: the best remaining detection takes every
    other one that overlaps it by more than NMS_IOU; its box becomes their score-weighted mean,
    its score stays its own. Returns (box, score) pairs, best first."""
    order = np.argsort(-scores)
    merged = []
    while order.size:
        top, rest = order[0], order[1:]
        overlap = box_iou(boxes[top], boxes[rest]) > NMS_IOU
        group = np.concatenate([[top], rest[overlap]])
        weights = scores[group]
        merged.append(((boxes[group] * weights[:, None]).sum(0) / weights.sum(), float(scores[top])))
        order = rest[~overlap]
    return merged


class BlazeFace:
    """One BlazeFace model: `detect` finds the faces of an RGB image."""

    def __init__(self, spec: BlazeFaceSpec, model_dir: Path):
        from ai_edge_litert.interpreter import Interpreter  # only the checks need it

        path = model_dir / spec.file
        if not path.is_file():
            raise SystemExit(f"no BlazeFace model at {path} (scripts/bench-faces extracts it from the mediapipe wheel)")
        self.spec = spec
        self.interpreter = Interpreter(model_path=str(path), num_threads=1)
        self.interpreter.allocate_tensors()
        (inp,) = self.interpreter.get_input_details()
        if list(inp["shape"]) != [1, spec.size, spec.size, 3]:
            raise SystemExit(f"{path}: input {list(inp['shape'])}, expected [1, {spec.size}, {spec.size}, 3]")
        self.input_index = inp["index"]
        # Two outputs: the regressors [1, n, 16] (box centre x, y, width, height, then 6 key
        # points x, y, all in input pixels relative to the anchor) and the scores [1, n, 1].
        # Their names differ between the two models: they are told apart by their last size.
        outputs = {int(d["shape"][-1]): d for d in self.interpreter.get_output_details()}
        self.anchors = ssd_anchors(spec)
        n = len(self.anchors)
        if sorted(outputs) != [1, 16] or [list(outputs[k]["shape"]) for k in (16, 1)] != [[1, n, 16], [1, n, 1]]:
            raise SystemExit(f"{path}: outputs {[list(d['shape']) for d in outputs.values()]}, "
                             f"expected [1, {n}, 16] and [1, {n}, 1]")
        self.regressors_index, self.scores_index = outputs[16]["index"], outputs[1]["index"]

    def detect(self, image_rgb: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        """The faces of an RGB u8 image as (x1, y1, x2, y2, score) in its pixels, best first:
        the image is letterboxed to the model's input, its values mapped to [-1, 1]; the
        detections with score >= min_score are kept and merged by weighted NMS."""
        size = self.spec.size
        square, scale, (x0, y0) = letterbox(image_rgb, size)
        tensor = (square.astype(np.float32) / 127.5 - 1.0)[None]
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.regressors_index)[0]
        logits = self.interpreter.get_tensor(self.scores_index)[0, :, 0].astype(np.float64)  # exp(100) > f32
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -SCORE_CLIPPING, SCORE_CLIPPING)))
        keep = scores >= self.spec.min_score
        if not keep.any():
            return []
        # Box centre = anchor centre + offset; width and height as they are (anchors are 1 x 1);
        # the raw values are input pixels, hence / size for 0..1 of the input.
        raw, anchors = raw[keep], self.anchors[keep]
        cx, cy = raw[:, 0] / size + anchors[:, 0], raw[:, 1] / size + anchors[:, 1]
        w, h = raw[:, 2] / size, raw[:, 3] / size
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        found = []
        for box, score in weighted_nms(boxes, scores[keep]):
            # back from 0..1 of the input to the pixels of the image
            x1, x2 = (box[[0, 2]] * size - x0) / scale
            y1, y2 = (box[[1, 3]] * size - y0) / scale
            found.append((float(x1), float(y1), float(x2), float(y2), score))
        return found


def load_blazeface(model_dir: Path) -> list[BlazeFace]:
    return [BlazeFace(spec, model_dir) for spec in BLAZEFACE_MODELS]


# ---------------------------------------------------------------------------------------
# The independent checks


def load_cascades() -> list[tuple[str, cv2.CascadeClassifier, bool]]:
    cascades = []
    for name, file, mirrored in CASCADES:
        cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / file))
        if cascade.empty():
            raise SystemExit(f"cannot load the OpenCV cascade {file} from {cv2.data.haarcascades}")
        cascades.append((name, cascade, mirrored))
    return cascades


@dataclass
class Checkers:
    """The independent detectors: BlazeFace's models (in the order they are tried) and the
    Haar cascades."""

    blazeface: list[BlazeFace]
    cascades: list[tuple[str, cv2.CascadeClassifier, bool]]

    @staticmethod
    def load(blazeface_dir: Path) -> "Checkers":
        return Checkers(load_blazeface(blazeface_dir), load_cascades())


def frame_luma(frame_bgr: np.ndarray) -> float:
    """Mean BT.601 luma (0.299 R + 0.587 G + 0.114 B), sampled every 4th pixel."""
    sample = frame_bgr[::4, ::4].astype(np.float32)
    return float((0.114 * sample[..., 0] + 0.587 * sample[..., 1] + 0.299 * sample[..., 2]).mean())


def matches_box(detection, box) -> bool:
    """The detection (x, y, w, h) has its centre inside the box (x1, y1, x2, y2) and a width
    of WIDTH_RANGE of the box's."""
    x, y, w, h = detection
    bx1, by1, bx2, by2 = box
    cx, cy = x + w / 2, y + h / 2
    inside = bx1 <= cx <= bx2 and by1 <= cy <= by2
    return inside and WIDTH_RANGE[0] * (bx2 - bx1) <= w <= WIDTH_RANGE[1] * (bx2 - bx1)


def square_region(frame: np.ndarray, bbox) -> tuple[np.ndarray, tuple[int, int]]:
    """The square of REGION_SCALE times the box's larger side, centred on the box, cut from
    the frame and black where it passes the frame's edges (the face stays at its centre).
    Returns it and its top-left corner in the frame's pixels (negative past the edge)."""
    x1, y1, x2, y2 = bbox
    side = max(1, round(REGION_SCALE * max(x2 - x1, y2 - y1)))
    left, top = round((x1 + x2 - side) / 2), round((y1 + y2 - side) / 2)
    frame_h, frame_w = frame.shape[:2]
    region = np.zeros((side, side, 3), frame.dtype)
    sx1, sy1 = max(0, left), max(0, top)
    sx2, sy2 = min(frame_w, left + side), min(frame_h, top + side)
    if sx2 > sx1 and sy2 > sy1:
        region[sy1 - top:sy2 - top, sx1 - left:sx2 - left] = frame[sy1:sy2, sx1:sx2]
    return region, (left, top)


def confirm_face_blazeface(frame_bgr: np.ndarray, bbox, models: list[BlazeFace]) -> tuple[str, float] | None:
    """(the BlazeFace model that confirms a face in `bbox` (pixels of the frame), its score),
    or None. The square region around the box is letterboxed to each model's input (the face
    is about half of it); the models are tried in order until one finds a face that scores
    CONFIRM_MIN_SCORE or more and matches the box (matches_box)."""
    if bbox[2] - bbox[0] < 2 or bbox[3] - bbox[1] < 2:
        return None
    region, (left, top) = square_region(frame_bgr, bbox)
    region = cv2.cvtColor(region, cv2.COLOR_BGR2RGB)
    for model in models:
        scores = [score for x1, y1, x2, y2, score in model.detect(region)
                  if score >= CONFIRM_MIN_SCORE and matches_box((x1 + left, y1 + top, x2 - x1, y2 - y1), bbox)]
        if scores:
            return model.spec.name, max(scores)
    return None


def face_region(bbox, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
    """The box grown REGION_SCALE times around its centre, clamped to the frame."""
    x1, y1, x2, y2 = bbox
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = (x2 - x1) * REGION_SCALE / 2, (y2 - y1) * REGION_SCALE / 2
    rx1, ry1 = max(0, int(cx - half_w)), max(0, int(cy - half_h))
    rx2, ry2 = min(frame_w, int(np.ceil(cx + half_w))), min(frame_h, int(np.ceil(cy + half_h)))
    return rx1, ry1, rx2, ry2


def cascade_detections(gray: np.ndarray, cascade, mirrored: bool, min_px: int) -> list[tuple]:
    """(x, y, w, h) boxes in `gray`'s pixels; with `mirrored`, also those found on the
    mirrored image, mapped back."""
    found = [tuple(d) for d in cascade.detectMultiScale(gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                                          minSize=(min_px, min_px))]
    if mirrored:
        width = gray.shape[1]
        for x, y, w, h in cascade.detectMultiScale(cv2.flip(gray, 1), scaleFactor=SCALE_FACTOR,
                                                   minNeighbors=MIN_NEIGHBORS, minSize=(min_px, min_px)):
            found.append((width - x - w, y, w, h))
    return found


def confirm_face_haar(frame_bgr: np.ndarray, bbox, cascades) -> str | None:
    """The name of the first cascade that confirms a face in `bbox` (pixels of the frame),
    or None. The region around the box is scaled so that the face is CHECK_FACE_PX wide:
    the cascades then look at the same face size on every clip."""
    frame_h, frame_w = frame_bgr.shape[:2]
    box_w = bbox[2] - bbox[0]
    if box_w < 2 or bbox[3] - bbox[1] < 2:
        return None
    rx1, ry1, rx2, ry2 = face_region(bbox, frame_w, frame_h)
    scale = CHECK_FACE_PX / box_w
    size = (max(1, round((rx2 - rx1) * scale)), max(1, round((ry2 - ry1) * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    region = cv2.resize(frame_bgr[ry1:ry2, rx1:rx2], size, interpolation=interpolation)
    gray = cv2.equalizeHist(cv2.cvtColor(region, cv2.COLOR_BGR2GRAY))
    box = [(bbox[0] - rx1) * scale, (bbox[1] - ry1) * scale, (bbox[2] - rx1) * scale, (bbox[3] - ry1) * scale]
    min_px = round(MIN_SIZE_FRACTION * CHECK_FACE_PX)
    for name, cascade, mirrored in cascades:
        if any(matches_box(d, box) for d in cascade_detections(gray, cascade, mirrored, min_px)):
            return name
    return None


def check_one(frame_bgr: np.ndarray, bbox, checkers: Checkers) -> dict:
    """Both checks of one crop: BlazeFace's (`confirmed`, `confirmed_by` the model, `score`)
    and the cascades' (`haar_confirmed`, `haar_confirmed_by`)."""
    blaze = confirm_face_blazeface(frame_bgr, bbox, checkers.blazeface)
    haar = confirm_face_haar(frame_bgr, bbox, checkers.cascades)
    return {"confirmed": blaze is not None, "confirmed_by": blaze[0] if blaze else None,
            "score": round(blaze[1], 4) if blaze else None,
            "haar_confirmed": haar is not None, "haar_confirmed_by": haar}


def check_crops(clip: Path, metas: dict[str, dict], checkers: Checkers) -> dict[str, list[dict]]:
    """Checks every dumped crop of every algorithm, decoding the clip once, in order (frame n
    is the n-th frame read). One result per crop: frame, bbox, our frame's luma minus the
    runtime's, and check_one's fields (`confirmed` and `haar_confirmed` None when the frame
    could not be checked)."""
    wanted: dict[int, list[tuple[str, int]]] = {}  # frame -> [(algorithm, crop index)]
    results = {}
    for algorithm, meta in metas.items():
        results[algorithm] = [{"frame": c["frame"], "bbox": c["bbox"], "confirmed": None, "haar_confirmed": None}
                              for c in meta["crops"]]
        for i, crop in enumerate(meta["crops"]):
            wanted.setdefault(crop["frame"], []).append((algorithm, i))
    if not wanted:
        return results
    warned = set()
    cap = cv2.VideoCapture(str(clip))
    try:
        n = 0
        while n <= max(wanted):
            ok, frame = cap.read()
            if not ok:
                break
            for algorithm, i in wanted.get(n, []):
                meta, crop = metas[algorithm], metas[algorithm]["crops"][i]
                result = results[algorithm][i]
                if (frame.shape[1], frame.shape[0]) != (meta.get("frame_width"), meta.get("frame_height")):
                    if algorithm not in warned:
                        log(f"  warning: {algorithm}: frames decode {frame.shape[1]}x{frame.shape[0]} here, "
                            f"{meta.get('frame_width')}x{meta.get('frame_height')} in faces.json: crops not checked")
                        warned.add(algorithm)
                    continue
                if crop.get("frame_luma") is not None:
                    luma = frame_luma(frame)
                    result["luma_diff"] = round(luma - crop["frame_luma"], 2)
                    if abs(result["luma_diff"]) > LUMA_TOLERANCE:
                        log(f"  warning: {algorithm} crop {i}: frame {n} luma {luma:.1f} here, "
                            f"{crop['frame_luma']:.1f} in faces.json: not the same frame?")
                result.update(check_one(frame, crop["bbox"], checkers))
            n += 1
    finally:
        cap.release()
    if n <= max(wanted):
        log(f"  warning: {clip.name} decodes {n} frames here; crops of later frames not checked")
    return results


def confirmed_counts(checks: list[dict], key: str = "confirmed") -> tuple[int, int]:
    """(confirmed, checked) crops, by BlazeFace (key "confirmed") or the cascades
    ("haar_confirmed")."""
    checked = [c for c in checks if c[key] is not None]
    return sum(c[key] for c in checked), len(checked)


# ---------------------------------------------------------------------------------------
# The contact sheets


def sample_evenly(n: int, k: int) -> list[int]:
    return sorted({round(x) for x in np.linspace(0, n - 1, min(n, k))}) if n else []


def row_label(algorithm: str, outcome: dict) -> str:
    if outcome.get("dump_error"):
        return f"{algorithm}: analyze failed: {outcome['dump_error'].splitlines()[0][:120]}"
    if not outcome["crop_checks"]:
        return f"{algorithm}: no face used: {outcome.get('reason') or 'no crops dumped'}"
    if not outcome["checked"]:
        return f"{algorithm}: {len(outcome['crop_checks'])} crops, none checked"
    return (f"{algorithm}: {len(outcome['crop_checks'])} crops, confirmed by BlazeFace {confirmed_cell(outcome)}, "
            f"by the Haar cascades {confirmed_cell(outcome, 'haar_confirmed')}")


def draw_sheet(title: str, rows: list[tuple[str, np.ndarray, list[dict]]], path: Path) -> None:
    """One row per algorithm: its label, then up to SHEET_CROPS crops sampled evenly, each
    framed green (BlazeFace confirms it), red (not) or grey (not checked), its frame number
    below."""
    font = ImageFont.load_default()
    crop_h, crop_w = next((c.shape[1:3] for _, c, _ in rows if len(c)), (112, 112))
    tile_w, tile_h = crop_w + 2 * BORDER_PX, crop_h + 2 * BORDER_PX
    row_h = LABEL_PX + tile_h + CAPTION_PX + GAP_PX
    width = GAP_PX + SHEET_CROPS * (tile_w + GAP_PX)
    sheet = Image.new("RGB", (width, LABEL_PX + GAP_PX + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP_PX, 2), title, fill="black", font=font)
    for r, (label, crops, checks) in enumerate(rows):
        top = LABEL_PX + GAP_PX + r * row_h
        draw.text((GAP_PX, top + 2), label, fill="black", font=font)
        for k, i in enumerate(sample_evenly(len(crops), SHEET_CROPS)):
            left = GAP_PX + k * (tile_w + GAP_PX)
            confirmed = checks[i]["confirmed"]
            colour = GREY if confirmed is None else GREEN if confirmed else RED
            draw.rectangle([left, top + LABEL_PX, left + tile_w - 1, top + LABEL_PX + tile_h - 1], fill=colour)
            sheet.paste(Image.fromarray(crops[i], "RGB"), (left + BORDER_PX, top + LABEL_PX + BORDER_PX))
            draw.text((left, top + LABEL_PX + tile_h), f"frame {checks[i]['frame']}", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


# ---------------------------------------------------------------------------------------
# One clip


def summarize_algorithm(runs: list[dict]) -> dict:
    """The medians and the `faces` object of one algorithm's runs on one clip."""
    faces = last_faces(runs)
    errors = [r["error"] for r in runs if "error" in r]
    out = {
        "runs": runs,
        "faces_ms": median_of(runs, "faces_ms"),
        "total_ms": median_of(runs, "total_ms"),
        "wall_ms": median_of(runs, "wall_ms"),
        "faces": faces,
        "chosen": (faces or {}).get("chosen"),
        "reason": faces.get("reason") if faces is not None else "no face stage (`faces` is null)",
        "error": errors[-1] if len(errors) == len(runs) else None,  # only when every run failed
        "dump_error": runs[-1].get("error"),  # the last run, the one that dumps the crops
    }
    out["share_of_total"] = ratio(out["faces_ms"], out["total_ms"])
    out["share_of_wall"] = ratio(out["faces_ms"], out["wall_ms"])
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def bench_clip(args, clip: dict, checkers: Checkers) -> dict:
    """Runs, checks and draws one clip; returns its entry of faces.json."""
    info = probe_clip(clip["path"])
    runs = run_interleaved(args, clip, args.work)
    outcomes = {algorithm: summarize_algorithm(runs[algorithm]) for algorithm in ALGORITHMS}
    return check_clip(args, clip, info, outcomes, checkers)


def recheck_clip(args, clip: dict, earlier: dict, checkers: Checkers) -> dict:
    """--check-only: the entry of an earlier run's faces.json, its crops checked again."""
    info = {k: earlier.get(k) for k in ("width", "height", "duration_s")}
    outcomes = {}
    for algorithm in ALGORITHMS:
        outcomes[algorithm] = {k: v for k, v in earlier["algorithms"][algorithm].items()
                               if k not in ("crop_checks", "confirmed", "haar_confirmed", "checked")}
    return check_clip(args, clip, info, outcomes, checkers)


def check_clip(args, clip: dict, info: dict, outcomes: dict[str, dict], checkers: Checkers) -> dict:
    """Checks the crops dumped into WORK/dumps/CLIP/ALGO, draws the contact sheet and returns
    the clip's entry of faces.json."""
    metas, crops = {}, {}
    for algorithm in ALGORITHMS:
        dump = load_dump(args.work / "dumps" / clip["path"].stem / algorithm)
        metas[algorithm] = dump[0] if dump else {"crops": []}
        crops[algorithm] = dump[1] if dump else np.zeros((0, 112, 112, 3), np.uint8)
    checks = check_crops(clip["path"], metas, checkers)
    for algorithm, outcome in outcomes.items():
        outcome["crop_checks"] = checks[algorithm]
        outcome["confirmed"], outcome["checked"] = confirmed_counts(checks[algorithm])
        outcome["haar_confirmed"], _ = confirmed_counts(checks[algorithm], "haar_confirmed")
    draw_sheet(f"{clip['name']}  ({info['width']}x{info['height']})",
               [(row_label(a, outcomes[a]), crops[a], outcomes[a]["crop_checks"]) for a in ALGORITHMS],
               args.work / "sheets" / f"{clip['path'].stem}.png")
    entry = {"clip": clip["name"], "real": clip["real"], **info,
             "speedup": ratio(outcomes["legacy"]["faces_ms"], outcomes["tracked"]["faces_ms"]),
             "algorithms": outcomes}
    log_clip(entry)
    return entry


def log_clip(entry: dict) -> None:
    parts = []
    for algorithm, o in entry["algorithms"].items():
        parts.append(f"{algorithm} {fmt(o['faces_ms'], '{:.0f}')} ms, confirmed {confirmed_cell(o)} "
                     f"(Haar {confirmed_cell(o, 'haar_confirmed')})")
    log(f"  {'; '.join(parts)}; speedup {fmt(entry['speedup'], '{:.2f}x')}")


# ---------------------------------------------------------------------------------------
# The report


def fmt(value, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def confirmed_cell(o: dict, key: str = "confirmed") -> str:
    """`o[key]` (BlazeFace's "confirmed" or the cascades' "haar_confirmed") of the checked crops."""
    if not o["checked"]:
        return "–"
    return f"{o[key]}/{o['checked']} ({100 * o[key] / o['checked']:.0f}%)"


def chosen_cell(o: dict) -> str:
    if o.get("error"):
        return "analyze failed"
    c = o["chosen"]
    if c is None:
        return f"none: {o['reason'] or 'no reason given'}"
    return (f"{c.get('frames')} fr, score {fmt(c.get('mean_score'), '{:.3f}')}, "
            f"{fmt(c.get('median_width_px'), '{:.0f}')} px")


def clip_row(e: dict) -> str:
    leg, trk = e["algorithms"]["legacy"], e["algorithms"]["tracked"]
    cells = [e["clip"], f"{e['width']}x{e['height']}", fmt(e["duration_s"], "{:.1f} s"),
             fmt(leg["faces_ms"], "{:.0f}"), fmt(trk["faces_ms"], "{:.0f}"), fmt(e["speedup"], "{:.2f}x"),
             f"{fmt(leg['share_of_total'], '{:.0%}')} / {fmt(leg['share_of_wall'], '{:.0%}')}",
             f"{fmt(trk['share_of_total'], '{:.0%}')} / {fmt(trk['share_of_wall'], '{:.0%}')}",
             confirmed_cell(leg), confirmed_cell(trk),
             confirmed_cell(leg, "haar_confirmed"), confirmed_cell(trk, "haar_confirmed"),
             chosen_cell(leg), chosen_cell(trk)]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def search_row(e: dict) -> str:
    cells = [e["clip"]]
    for algorithm in ALGORITHMS:
        f = e["algorithms"][algorithm]["faces"] or {}
        cells += [fmt(f.get("frames_examined"), "{}"), fmt(f.get("full_detections"), "{}"), fmt(f.get("tracks"), "{}")]
    return "| " + " | ".join(cells) + " |"


def has_face(e: dict) -> bool:
    return any(o["chosen"] is not None for o in e["algorithms"].values())


def summarize(entries: list[dict]) -> dict:
    """The summary: the median speedup and the tracked face share over the clips where some
    algorithm used a face; the confirmed share of each algorithm over all crops, BlazeFace's
    and the cascades'; the clips with no usable face (and why); the failed runs; what the
    generated clips got wrong."""
    speedups = [e["speedup"] for e in entries if has_face(e) and e["speedup"] is not None]
    tracked = [e["algorithms"]["tracked"] for e in entries]
    shares = [o["share_of_total"] for o, e in zip(tracked, entries) if has_face(e) and o["share_of_total"] is not None]
    summary = {"median_speedup": statistics.median(speedups) if speedups else None,
               "tracked_face_share_median": statistics.median(shares) if shares else None,
               "tracked_face_share_max": max(shares) if shares else None}
    for algorithm in ALGORITHMS:
        outcomes = [e["algorithms"][algorithm] for e in entries]
        checked = sum(o["checked"] for o in outcomes)
        for key in ("confirmed", "haar_confirmed"):  # BlazeFace's, the cascades'
            confirmed = sum(o[key] for o in outcomes)
            summary[f"{algorithm}_{key}"] = {"confirmed": confirmed, "checked": checked,
                                             "share": confirmed / checked if checked else None}
        # BlazeFace's confirmations that needed the full-range model
        summary[f"{algorithm}_confirmed"]["by_full_range"] = sum(
            c.get("confirmed_by") == "full-range" for o in outcomes for c in o["crop_checks"])
    summary["no_usable_face"] = {e["clip"]: {a: chosen_cell(o) for a, o in e["algorithms"].items() if o["chosen"] is None}
                                 for e in entries if any(o["chosen"] is None for o in e["algorithms"].values())}
    summary["failed_runs"] = sum("error" in r for e in entries for o in e["algorithms"].values() for r in o["runs"])
    summary["expectations"] = check_expectations(entries)
    return summary


def check_expectations(entries: list[dict]) -> list[str]:
    """Failures of what the generated clips must give: a face on talking-face, none (with a
    reason) on test-pattern, from both algorithms."""
    failures = []
    for e in entries:
        expected = EXPECT_FACE.get(e["clip"]) if not e["real"] else None
        if expected is None:
            continue
        for algorithm, o in e["algorithms"].items():
            if o.get("error"):
                failures.append(f"{e['clip']}: {algorithm}: analyze failed")
            elif expected and o["chosen"] is None:
                failures.append(f"{e['clip']}: {algorithm} used no face ({o['reason']})")
            elif not expected and o["chosen"] is not None:
                failures.append(f"{e['clip']}: {algorithm} used a face on a clip without one")
            elif not expected and not (o["faces"] or {}).get("reason"):
                failures.append(f"{e['clip']}: {algorithm} used no face but gave no reason (faces: {o['faces']})")
    return failures


def markdown(entries: list[dict], summary: dict, runs: int) -> str:
    lines = ["# emollama face benchmark: legacy vs tracked face search", "",
             f"`analyze --mode full --preset fast`, {runs} runs per algorithm, interleaved; medians. "
             "faces / total: the face stage's share of the request (`timings_ms`); faces / wall: of the "
             "process wall time measured here. Confirmed: the dumped crops (last run) in which "
             "BlazeFace (MediaPipe face detection) finds the face; Haar: those in which OpenCV's Haar "
             "cascades find it, for comparison (they miss many real faces; see bench_faces.py). Chosen: "
             "the face track used (frames, mean MTCNN score, median width) or why none is. Sheets: "
             "sheets/CLIP.png (borders: BlazeFace's verdict).", "",
             "| clip | resolution | duration | faces ms legacy | faces ms tracked | legacy / tracked | "
             "legacy share of total / wall | tracked share of total / wall | confirmed legacy | confirmed tracked | "
             "Haar legacy | Haar tracked | chosen legacy | chosen tracked |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    lines += [clip_row(e) for e in entries]
    lines += ["", "## The search's work (last run)", "",
              "| clip | legacy frames examined | legacy full detections | legacy tracks | "
              "tracked frames examined | tracked full detections | tracked tracks |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [search_row(e) for e in entries]
    s = summary
    lines += ["", "## Summary", "",
              f"- median speedup of the face stage (legacy / tracked) over the clips with a face: "
              f"{fmt(s['median_speedup'], '{:.2f}x')}",
              f"- tracked face stage's share of the request over those clips: median "
              f"{fmt(s['tracked_face_share_median'], '{:.0%}')}, max {fmt(s['tracked_face_share_max'], '{:.0%}')}"]
    for algorithm in ALGORITHMS:
        c, h = s[f"{algorithm}_confirmed"], s[f"{algorithm}_haar_confirmed"]
        lines.append(f"- {algorithm} crops confirmed over all clips: BlazeFace {c['confirmed']}/{c['checked']} "
                     f"({fmt(c['share'], '{:.0%}')}; {c['by_full_range']} by its full-range model), "
                     f"Haar cascades {h['confirmed']}/{h['checked']} ({fmt(h['share'], '{:.0%}')})")
    lines.append("- clips with no usable face:" + (" none" if not s["no_usable_face"] else ""))
    for clip, per_algorithm in s["no_usable_face"].items():
        lines.append(f"  - {clip}: " + "; ".join(f"{a}: {why}" for a, why in per_algorithm.items()))
    lines.append(f"- failed analyze runs: {s['failed_runs']}")
    lines.append("- generated clips as expected (a face on talking-face, none on test-pattern): "
                 + ("yes" if not s["expectations"] else "NO"))
    lines += [f"  - {f}" for f in s["expectations"]]
    return "\n".join(lines) + "\n"


def check_settings() -> dict:
    """The settings of the independent checks, for faces.json."""
    return {"region_scale": REGION_SCALE, "width_range": WIDTH_RANGE,
            "blazeface": {"ai_edge_litert": version("ai-edge-litert"), "score_clipping": SCORE_CLIPPING,
                          "nms_iou": NMS_IOU, "confirm_min_score": CONFIRM_MIN_SCORE,
                          "models": [{"name": m.name, "file": m.file, "size": m.size, "strides": m.strides,
                                      "interpolated_anchor": m.interpolated_anchor, "min_score": m.min_score}
                                     for m in BLAZEFACE_MODELS]},
            "haar": {"opencv": cv2.__version__, "face_px": CHECK_FACE_PX, "min_size_fraction": MIN_SIZE_FRACTION,
                     "scale_factor": SCALE_FACTOR, "min_neighbors": MIN_NEIGHBORS,
                     "cascades": [c[1] for c in CASCADES]}}


def check_only(args, checkers: Checkers) -> tuple[list[dict], dict]:
    """--check-only: the entries and settings of WORK/faces.json, every clip's dumped crops
    checked again (a clip no longer found is left out, with a warning)."""
    earlier_path = args.work / "faces.json"
    if not earlier_path.is_file():
        raise SystemExit(f"--check-only: no {earlier_path} (run the benchmark once without it)")
    earlier = json.loads(earlier_path.read_text())
    clips = {clip["name"]: clip for clip in list_clips(args.media_dir, args.real_clips)}
    entries = []
    for k, entry in enumerate(earlier["clips"], 1):
        log(f"[{k}/{len(earlier['clips'])}] {entry['clip']} (checking again)")
        if entry["clip"] not in clips:
            log(f"  warning: clip {entry['clip']} not found: left out of the report")
            continue
        entries.append(recheck_clip(args, clips[entry["clip"]], entry, checkers))
    return entries, earlier["settings"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emollama_export.bench_faces", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, help="the emollama binary")
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--media-dir", type=Path, required=True, help="the generated clips (scripts/make-media.sh)")
    ap.add_argument("--real-clips", type=Path, help="a folder of real .mp4 clips, read in place")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--blazeface-dir", type=Path, default=BLAZEFACE_DIR,
                    help="the BlazeFace .tflite models (scripts/bench-faces extracts them)")
    ap.add_argument("--check-only", action="store_true",
                    help="run nothing: check the crops dumped in WORK again, with the timings of WORK/faces.json")
    args = ap.parse_args(argv)
    if not args.check_only and (args.bin is None or args.bundle is None):
        ap.error("--bin and --bundle are needed (unless --check-only)")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    checkers = Checkers.load(args.blazeface_dir)
    if args.check_only:
        entries, settings = check_only(args, checkers)
        settings["checked_again"] = True  # the checks below are newer than the runs
    else:
        clips = list_clips(args.media_dir, args.real_clips)
        entries = []
        for k, clip in enumerate(clips, 1):
            log(f"[{k}/{len(clips)}] {clip['name']}")
            entries.append(bench_clip(args, clip, checkers))
        settings = {"bin": str(args.bin), "bundle": str(args.bundle), "runs": args.runs, "algorithms": ALGORITHMS}
    settings.pop("opencv", None)  # an earlier faces.json's: now under check.haar
    settings["check"] = check_settings()
    summary = summarize(entries)
    (args.work / "faces.json").write_text(json.dumps({"settings": settings, "clips": entries, "summary": summary},
                                                     indent=2, default=str))
    report = markdown(entries, summary, settings["runs"])
    (args.work / "faces.md").write_text(report)
    print(report)
    return 1 if summary["failed_runs"] or summary["expectations"] else 0


if __name__ == "__main__":
    sys.exit(main())
