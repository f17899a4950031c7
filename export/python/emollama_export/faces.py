"""Face detector: MTCNN from `facenet-pytorch` 2.6.0 (MIT), real weights, as three ONNX
nets (P-Net with dynamic size, R-Net, O-Net). The runtime ports the cascade around them
(facenet_pytorch/models/utils/detect_face.py); its reference detections come from running
facenet-pytorch's own code here.

facenet-pytorch pins old torch versions, so it is not pip-installed: setup extracts its
wheel, and this module imports the package from that folder without running its
__init__ (which pulls in unrelated models). The one torchvision function detect_face uses,
`batched_nms`, is provided with torchvision's semantics (torchvision is not installed:
its wheels pin another torch).
"""

import importlib
import sys
import types
from pathlib import Path

import torch


def _batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision.ops.batched_nms: per-category NMS, IoU on (x2-x1)*(y2-y1) areas,
    suppressing IoU > threshold, result sorted by decreasing score."""
    keep_all = []
    for c in torch.unique(idxs):
        ids = torch.nonzero(idxs == c).flatten()
        b, s = boxes[ids], scores[ids]
        order = torch.argsort(s, descending=True, stable=True)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        suppressed = torch.zeros(len(order), dtype=torch.bool)
        for i_pos, i in enumerate(order.tolist()):
            if suppressed[i_pos]:
                continue
            keep_all.append(int(ids[i]))
            for j_pos in range(i_pos + 1, len(order)):
                j = int(order[j_pos])
                if suppressed[j_pos]:
                    continue
                xx1 = torch.maximum(b[i, 0], b[j, 0]); yy1 = torch.maximum(b[i, 1], b[j, 1])
                xx2 = torch.minimum(b[i, 2], b[j, 2]); yy2 = torch.minimum(b[i, 3], b[j, 3])
                inter = torch.clamp(xx2 - xx1, min=0) * torch.clamp(yy2 - yy1, min=0)
                iou = inter / (area[i] + area[j] - inter)
                if iou > iou_threshold:
                    suppressed[j_pos] = True
    keep = torch.tensor(keep_all, dtype=torch.long)
    if len(keep) == 0:
        return keep
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def load_mtcnn(facenet_dir: Path):
    """facenet_pytorch.models.mtcnn.MTCNN with its packaged weights, on CPU."""
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        boxes = types.ModuleType("torchvision.ops.boxes")
        boxes.batched_nms = _batched_nms
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = types.ModuleType("torchvision.transforms.functional")
        tv.ops, ops.boxes, tv.transforms = ops, boxes, transforms
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
                            "torchvision.transforms": transforms,
                            "torchvision.transforms.functional": transforms.functional})
    pkg = types.ModuleType("facenet_pytorch")
    pkg.__path__ = [str(facenet_dir / "facenet_pytorch")]
    sys.modules.setdefault("facenet_pytorch", pkg)
    mtcnn = importlib.import_module("facenet_pytorch.models.mtcnn")
    return mtcnn.MTCNN(keep_all=True, select_largest=True, device="cpu").eval()


def reference_detect(mtcnn, rgb_uint8):
    """Boxes [N,4], probabilities [N], landmarks [N,5,2] from facenet-pytorch, largest first."""
    from PIL import Image

    boxes, probs, points = mtcnn.detect(Image.fromarray(rgb_uint8), landmarks=True)
    if boxes is None:
        return [], [], []
    return boxes.tolist(), [float(p) for p in probs], points.tolist()
