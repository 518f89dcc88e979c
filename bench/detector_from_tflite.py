"""Turn the INT8 TFLite YOLOv8n detector into a float Ultralytics PyTorch checkpoint, and check that they agree.

Why: the GPU throughput benchmark runs person detection in PyTorch on a GPU, and the GPU machine has no internet
to fetch ``yolov8n.pt``. The YOLOv8n weights we do have are the Ultralytics TFLite export in shared/models. That
file ("_int8") is onnx2tf's dynamic-range quantisation, not full-integer: int8 conv weights (one scale per tensor,
zero point 0), float biases, float graph input and output; the first conv and the DFL conv stay float, and the
runtime quantises activations to int8 on the fly.

How: read every CONV_2D / DEPTHWISE_CONV_2D op of the graph with the LiteRT interpreter, dequantise its weights
((q - zero point) * scale along the quantised dimension; int32 biases likewise), build the float model from
``yolov8n.yaml`` with Conv+BatchNorm fused (so every conv has weight + bias, as in the graph), pair graph convs with
torch convs (torch in forward order; each takes the first unused graph conv, in execution order, of the same shape
and output size, since the graph runs the Detect head's scales P5, P4, P3 where torch runs P3, P4, P5; the DFL conv
keeps its fixed weights if the graph has none), then check the pairing by comparing every conv's output on a real
frame with the graph's own intermediate tensor. The model is saved as
an Ultralytics checkpoint (fp16) that ``YOLO(path)`` loads. ``--check N`` runs ``YOLO(tflite)`` and ``YOLO(pt)`` on
CPU on N frames of vtest.avi and reports how well their person boxes agree and the time per frame of each.

    YOLO_OFFLINE=1 python bench/detector_from_tflite.py [--tflite PATH] [--out PATH] [--check N]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import supervision as sv
import torch
import yaml
from ai_edge_litert.interpreter import Interpreter

from reidcam.app.config import shared_dir

DEFAULT_TFLITE = shared_dir() / "models" / "yolov8n-coco-int8" / "yolov8n_int8.tflite"
DEFAULT_VIDEO = shared_dir() / "data" / "vtest.avi"
DEFAULT_OUT = Path(".gpu/shared/models/yolov8n-from-tflite.pt")
IMGSZ = 640
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
# Relative L2 error of a conv's output, torch vs graph, on the same frame. The graph quantises activations to int8 on
# the fly, which costs about 0.03 per conv and adds up to 0.05-0.15 at the deepest convs; a conv paired with the wrong
# graph op, or a 3x3 kernel with height and width swapped, is off by 0.5 or more.
MAX_CONV_ERROR = 0.3
MATCH_IOU = 0.7

log = logging.getLogger("detector_from_tflite")


@dataclass
class GraphConv:
    op_index: int
    op_name: str
    weight: np.ndarray  # OIHW, float32
    bias: np.ndarray  # float32
    output: int  # tensor index of the conv's output (before the activation)

    @property
    def signature(self) -> tuple:
        return self.weight.shape


@dataclass
class TorchConv:
    name: str
    module: torch.nn.Conv2d
    out_hw: tuple[int, int]

    @property
    def signature(self) -> tuple:
        return tuple(self.module.weight.shape)


def open_graph(path: Path) -> Interpreter:
    """The interpreter as Ultralytics runs it (XNNPACK), keeping every intermediate tensor for the per-conv check."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter


def dequantised(interpreter: Interpreter, detail: dict) -> np.ndarray:
    """A constant tensor as float32: (q - zero point) * scale, per channel along the quantised dimension."""
    value = interpreter.get_tensor(detail["index"])
    if value.dtype == np.float32:
        return value.copy()
    quant = detail["quantization_parameters"]
    scales, zero_points = quant["scales"], quant["zero_points"]
    if scales.size == 0:
        raise ValueError(f"tensor {detail['name']!r} is {value.dtype} with no quantisation scales")
    axis = quant["quantized_dimension"]
    return ((value.astype(np.float32) - along(zero_points, axis, value.ndim)) * along(scales, axis, value.ndim)).astype(
        np.float32
    )


def along(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """Per-channel values shaped to broadcast along ``axis``; a single value (per-tensor) broadcasts everywhere.

    XNNPACK reports a per-tensor scale repeated per channel but leaves the zero point single, so each is shaped alone.
    """
    shape = [1] * ndim
    if values.size > 1:
        shape[axis] = values.size
    return values.reshape(shape)


def to_oihw(weight: np.ndarray, op_name: str) -> np.ndarray:
    """TFLite conv weights are OHWI, depthwise weights 1HWO; torch wants OIHW (depthwise: O1HW)."""
    axes = (3, 0, 1, 2) if op_name == "DEPTHWISE_CONV_2D" else (0, 3, 1, 2)
    return np.ascontiguousarray(weight.transpose(axes))


def read_graph_convs(interpreter: Interpreter) -> list[GraphConv]:
    """Every conv op of the graph in execution order, with dequantised OIHW weights and float biases."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    convs = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in CONV_OPS:
            continue
        _, weight_index, bias_index = op["inputs"]
        weight = to_oihw(dequantised(interpreter, details[weight_index]), op["op_name"])
        bias = np.zeros(weight.shape[0], np.float32)
        if bias_index >= 0:
            bias = dequantised(interpreter, details[bias_index])
        convs.append(GraphConv(op["index"], op["op_name"], weight, bias, op["outputs"][0]))
    return convs


def build_model():
    """yolov8n from the yaml shipped inside Ultralytics, Conv+BatchNorm fused, in eval mode on CPU."""
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    return model.fuse(verbose=False).eval()


def torch_convs(model: torch.nn.Module) -> list[TorchConv]:
    """The model's Conv2d modules in forward execution order, from hooks on one dummy forward."""
    names = {module: name for name, module in model.named_modules()}
    order: list[TorchConv] = []

    def record(module, _inputs, output):
        order.append(TorchConv(names[module], module, tuple(output.shape[-2:])))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, IMGSZ, IMGSZ))
    for hook in hooks:
        hook.remove()
    if len({id(c.module) for c in order}) != len(order):
        raise RuntimeError("a Conv2d module runs more than once in one forward; the pairing assumes once")
    return order


def pair_convs(graph: list[GraphConv], model: list[TorchConv], out_hw: dict[int, tuple]) -> list[tuple]:
    """Each torch conv (forward order) takes the first unused graph conv with the same weight shape and output size.

    Only the DFL conv (fixed arange weights) may go without a partner; every graph conv must find one.
    """
    unused = list(graph)
    pairs = []
    for conv in model:
        match = next((g for g in unused if g.signature == conv.signature and out_hw[g.output] == conv.out_hw), None)
        if match is None and conv.name.endswith("dfl.conv"):
            continue
        if match is None:
            raise RuntimeError(
                f"no graph conv left for {conv.name} (weight {conv.signature}, output {conv.out_hw}); "
                f"unpaired graph convs: {describe(unused, out_hw)}"
            )
        unused.remove(match)
        pairs.append((match, conv))
    if unused:
        raise RuntimeError(f"graph convs with no torch conv of their shape: {describe(unused, out_hw)}")
    return pairs


def describe(convs: list[GraphConv], out_hw: dict[int, tuple]) -> list[tuple]:
    return [(f"op {g.op_index}", g.signature, out_hw[g.output]) for g in convs]


def load_weights(pairs: list[tuple]) -> None:
    """Copy graph weights and biases into the torch convs; a conv without bias needs a zero graph bias (DFL)."""
    for graph, conv in pairs:
        with torch.no_grad():
            conv.module.weight.copy_(torch.from_numpy(graph.weight))
            if conv.module.bias is not None:
                conv.module.bias.copy_(torch.from_numpy(graph.bias))
            elif np.abs(graph.bias).max() > 0:
                raise RuntimeError(f"{conv.name} has no bias but graph op {graph.op_index} has a non-zero one")


def letterboxed(frame: np.ndarray) -> np.ndarray:
    """A BGR frame as the graph's input: 640x640 letterbox (grey 114), RGB, float 0..1, NHWC."""
    from ultralytics.data.augment import LetterBox

    image = LetterBox((IMGSZ, IMGSZ), auto=False)(image=frame)
    return (image[None, ..., ::-1] / 255.0).astype(np.float32)


def conv_errors(interpreter: Interpreter, pairs: list[tuple], model: torch.nn.Module, image: np.ndarray) -> list:
    """Relative L2 error of every torch conv's output against the graph's tensor, both run on the same image."""
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    outputs = {}
    hooks = [
        conv.module.register_forward_hook(lambda m, _i, out: outputs.__setitem__(m, out.detach().numpy()))
        for _, conv in pairs
    ]
    with torch.no_grad():
        model(torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2))))
    for hook in hooks:
        hook.remove()
    errors = []
    for graph, conv in pairs:
        expected = interpreter.get_tensor(graph.output).transpose(0, 3, 1, 2)
        error = np.linalg.norm(outputs[conv.module] - expected) / max(np.linalg.norm(expected), 1e-12)
        errors.append((float(error), conv.name, graph.op_index))
    return errors


def check_pairing(errors: list) -> None:
    median = float(np.median([error for error, *_ in errors]))
    log.info("per-conv output error, torch vs graph: median %.4f, worst %.4f (%s, graph op %d)", median, *max(errors))
    bad = [e for e in errors if e[0] > MAX_CONV_ERROR]
    if bad:
        raise RuntimeError(f"{len(bad)} conv outputs differ from the graph by more than {MAX_CONV_ERROR}: {bad[:5]}")


def coco_names(tflite: Path) -> dict[int, str]:
    metadata = yaml.safe_load((tflite.parent / "metadata.yaml").read_text())
    names = {int(k): v for k, v in metadata["names"].items()}
    if len(names) != 80:
        raise RuntimeError(f"metadata.yaml beside {tflite} names {len(names)} classes, expected 80")
    return names


def save_checkpoint(model: torch.nn.Module, names: dict[int, str], tflite: Path, out: Path) -> None:
    """Save in the layout ``strip_optimizer`` writes, which ``YOLO(path)`` loads."""
    from ultralytics import __version__

    model.names = names
    model.args = {"task": "detect", "imgsz": IMGSZ, "model": "yolov8n.yaml", "data": "coco.yaml"}
    model.half()
    for parameter in model.parameters():
        parameter.requires_grad = False
    checkpoint = {
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": dict(model.args),
        "converted_from": str(tflite),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)


def sample_frames(video: Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly over the video."""
    capture = cv2.VideoCapture(str(video))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(np.linspace(0, total - 1, count).round().astype(int).tolist())
    frames = []
    for index in range(total):
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            frames.append(frame)
    capture.release()
    return frames


def detect(model, frames: list[np.ndarray], **kwargs) -> tuple[list, float, float]:
    """Person boxes and scores per frame, and wall and process-CPU milliseconds per frame (after one warm-up)."""
    options = dict(imgsz=IMGSZ, classes=[0], conf=0.25, device="cpu", verbose=False, **kwargs)
    model.predict(frames[0], **options)
    results = []
    wall, cpu = time.perf_counter(), time.process_time()
    for frame in frames:
        boxes = model.predict(frame, **options)[0].boxes
        results.append((boxes.xyxy.numpy(), boxes.conf.numpy()))
    count = len(frames)
    return results, 1000 * (time.perf_counter() - wall) / count, 1000 * (time.process_time() - cpu) / count


def match_frame(reference: tuple, other: tuple) -> list[tuple[float, float]]:
    """Greedy one-to-one matching by IoU >= MATCH_IOU: (IoU, |score difference|) per matched reference box."""
    (boxes_a, scores_a), (boxes_b, scores_b) = reference, other
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return []
    iou = sv.box_iou_batch(boxes_a, boxes_b)
    matches, used_a, used_b = [], set(), set()
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < MATCH_IOU:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matches.append((float(iou[i, j]), float(abs(scores_a[i] - scores_b[j]))))
    return matches


def agreement(reference: list, other: list) -> dict:
    matches = [m for a, b in zip(reference, other) for m in match_frame(a, b)]
    total = sum(len(boxes) for boxes, _ in reference)
    return {
        "boxes": sum(len(boxes) for boxes, _ in other),
        "matched": len(matches) / max(total, 1),
        "iou": float(np.mean([m[0] for m in matches])) if matches else float("nan"),
        "score": float(np.mean([m[1] for m in matches])) if matches else float("nan"),
    }


def verify(tflite: Path, converted: Path, video: Path, count: int) -> None:
    """Run both models on CPU on ``count`` frames and print how well the converted one agrees with the TFLite one."""
    from ultralytics import YOLO

    frames = sample_frames(video, count)
    reference, ref_wall, ref_cpu = detect(YOLO(str(tflite), task="detect"), frames)
    pt_model = YOLO(str(converted))
    square, sq_wall, sq_cpu = detect(pt_model, frames, rect=False)
    rect, rect_wall, rect_cpu = detect(pt_model, frames)
    ref_boxes = sum(len(boxes) for boxes, _ in reference)
    print(f"\nverification on {len(frames)} frames of {video.name} (CPU, imgsz {IMGSZ}, person, conf 0.25)")
    print(f"  {'tflite':29}: {ref_boxes:4d} boxes, {ref_wall:6.1f} ms/frame wall, {ref_cpu:6.1f} ms CPU")
    for label, result, wall, cpu in (
        ("converted, same 640x640 input", square, sq_wall, sq_cpu),
        ("converted, default rect input", rect, rect_wall, rect_cpu),
    ):
        stats = agreement(reference, result)
        print(
            f"  {label}: {stats['boxes']:4d} boxes, {wall:6.1f} ms/frame wall, {cpu:6.1f} ms CPU; "
            f"{100 * stats['matched']:.1f} % of tflite boxes matched at IoU>={MATCH_IOU}, "
            f"mean IoU {stats['iou']:.3f}, mean |score diff| {stats['score']:.4f}"
        )


def convert(tflite: Path, out: Path, video: Path) -> None:
    interpreter = open_graph(tflite)
    graph = read_graph_convs(interpreter)
    out_hw = {g.output: tuple(interpreter.get_tensor(g.output).shape[1:3]) for g in graph}
    model = build_model()
    pairs = pair_convs(graph, torch_convs(model), out_hw)
    reordered = sum(1 for position, (g, _) in enumerate(pairs) if g is not graph[position])
    dfl = next((f"graph op {g.op_index}" for g, c in pairs if c.name.endswith("dfl.conv")), "not in graph, kept fixed")
    depthwise = sum(g.op_name == "DEPTHWISE_CONV_2D" for g in graph)
    log.info(
        "paired all %d graph convs (%d depthwise) with torch convs; %d paired out of graph order; DFL conv: %s",
        len(pairs), depthwise, reordered, dfl,
    )
    load_weights(pairs)
    check_pairing(conv_errors(interpreter, pairs, model, letterboxed(sample_frames(video, 1)[0])))
    save_checkpoint(model, coco_names(tflite), tflite, out)
    log.info("wrote %s (%.2f MB)", out, out.stat().st_size / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite", type=Path, default=DEFAULT_TFLITE, help="the Ultralytics YOLOv8n TFLite export")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .pt checkpoint")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="frames for the checks")
    parser.add_argument("--check", type=int, default=30, metavar="N", help="frames to compare on (0: no comparison)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert(args.tflite, args.out, args.video)
    if args.check > 0:
        verify(args.tflite, args.out, args.video, args.check)


if __name__ == "__main__":
    main()
