"""Whether TensorRT can build an engine from an ONNX graph, checked before the exporter
writes it: the graph's opset, operators, their statically checkable restrictions and
its tensor types against onnx-tensorrt's support list for the TensorRT that JetPack 6
ships. The list is the data file the runtime carries (`engines/data/`); the runtime's
`emollama compile --check` applies the same rules to a bundle's graphs, with the
optimisation profiles of the device's plan on top."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

import onnx

SUPPORT_DATA = Path(__file__).resolve().parents[3] / "engines" / "data" / "tensorrt-10.3-onnx.toml"


@cache
def support() -> dict:
    with open(SUPPORT_DATA, "rb") as f:
        return tomllib.load(f)


class TensorRtRefuses(SystemExit):
    """The graph would not build: the exporter keeps no file."""


def _default_domain(domain: str) -> bool:
    return domain in ("", "ai.onnx")


def _nodes(graph: onnx.GraphProto):
    """Every node of the graph and of its subgraphs, outer graph first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _nodes(sub)


def _constants(graph: onnx.GraphProto) -> set:
    names = {t.name for t in graph.initializer}
    for node in _nodes(graph):
        if node.op_type == "Constant":
            names.update(node.output)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names.update(t.name for t in sub.initializer)
    return names


def _consumed(graph: onnx.GraphProto) -> set:
    names = {o.name for o in graph.output}
    for node in _nodes(graph):
        names.update(node.input)
    return names


def check(model: onnx.ModelProto) -> tuple[list, list]:
    """(refusals, warnings); no refusals: TensorRT can build it."""
    data = support()
    trt, ops = data["source"]["tensorrt"], data["operators"]
    refusals, warnings = [], []
    lo, hi = data["opset"]["min"], data["opset"]["max"]
    opset = next((o.version for o in model.opset_import if _default_domain(o.domain)), None)
    if opset is None:
        refusals.append("the graph imports no opset of the default ONNX domain")
    elif not lo <= opset <= hi:
        refusals.append(f"opset {opset} is outside TensorRT {trt}'s supported range {lo}..={hi}")
    graph = model.graph
    constants, consumed, seen = _constants(graph), _consumed(graph), set()
    for node in _nodes(graph):
        reason = _check_node(node, ops.get(node.op_type), trt, constants, consumed)
        if reason and reason not in seen:
            seen.add(reason)
            refusals.append(f"{reason} (node {node.name or (node.output[0] if node.output else '(unnamed)')})")
    types = [(f"`{v.name}`", v.type.tensor_type.elem_type) for v in list(graph.input) + list(graph.output)]
    types += [(f"initializer `{t.name}`", t.data_type) for t in graph.initializer]
    types += [(f"Cast {n.name}", a.i) for n in _nodes(graph) if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    seen_types = set()
    for what, code in types:
        dtype = onnx.TensorProto.DataType.Name(code)
        if dtype in data["types"]["supported"] or dtype in seen_types:
            continue
        seen_types.add(dtype)
        if dtype in data["types"]["limited"]:
            warnings.append(f"{what} is {dtype}: TensorRT casts it down")
        else:
            refusals.append(f"{what} is {dtype}, a type TensorRT {trt} does not support")
    return refusals, warnings


def _check_node(node, rule, trt, constants, consumed):
    op = node.op_type if _default_domain(node.domain) else f"{node.domain}::{node.op_type}"
    if not _default_domain(node.domain):
        return f"operator {op} is outside the standard ONNX domain: TensorRT {trt} would need a plugin for it"
    if rule is None:
        return f"operator {op} is not in TensorRT {trt}'s ONNX operator list"
    because = f": {rule['restriction']}" if rule.get("restriction") else ""
    if not rule.get("supported", True):
        return f"operator {op} is not supported by TensorRT {trt}"
    for i in rule.get("initializer_inputs", []):
        if i < len(node.input) and node.input[i] and node.input[i] not in constants:
            return f"{op}: input {i} (`{node.input[i]}`) is computed, TensorRT {trt} needs a constant{because}"
    attrs = {a.name: a for a in node.attribute}
    ranks = rule.get("spatial_ranks")
    if ranks and "kernel_shape" in attrs and len(attrs["kernel_shape"].ints) not in ranks:
        return f"{op}: {len(attrs['kernel_shape'].ints)}-D is not supported by TensorRT {trt}{because}"
    for name, allowed in rule.get("attributes", {}).items():
        if name in attrs and attrs[name].s.decode(errors="replace") not in allowed:
            return f"{op}: {name} = \"{attrs[name].s.decode(errors='replace')}\" is not supported by TensorRT {trt}{because}"
    for i in rule.get("unused_outputs", []):
        if i < len(node.output) and node.output[i] and node.output[i] in consumed:
            return f"{op}: output {i} (`{node.output[i]}`) is used, TensorRT {trt} cannot produce it{because}"
    return None


def require(path: Path, shown: str | None = None) -> list:
    """Refuse (remove `path`, raise) a graph TensorRT would not build; the warnings else."""
    refusals, warnings = check(onnx.load(str(path), load_external_data=False))
    if refusals:
        path.unlink(missing_ok=True)
        raise TensorRtRefuses(f"{shown or path.name}: TensorRT {support()['source']['tensorrt']} would refuse this "
                              f"graph, not written: " + "; ".join(refusals))
    return warnings
