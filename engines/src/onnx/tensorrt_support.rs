//! Whether TensorRT can build an engine from an ONNX graph, decided without a GPU: the
//! graph's opset, operators, their statically checkable restrictions and its tensor
//! types against onnx-tensorrt's support list for the TensorRT that JetPack 6 ships
//! (`engines/data/tensorrt-10.3-onnx.toml`, with its source), and its inputs against the
//! optimisation profiles the runtime will ask for. The exporters read the same data file.
//!
//! What it cannot see: per-type support inside an operator, shape-dependent limits and
//! the builder's memory. It refuses what is sure to fail and passes the rest; the first
//! TensorRT build on a device is still the last word.

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use emollama_bundle::{Dim, TensorSpec};
use serde::{Deserialize, Serialize};

use super::graph::{dtype_name, is_default_domain, GraphDim, GraphProto, ModelProto, NodeProto};
use super::providers::{OptimisationProfile, TensorRtOptions};
use crate::EngineError;

/// The support list this binary carries.
const SUPPORT_DATA: &str = include_str!("../../data/tensorrt-10.3-onnx.toml");

/// onnx-tensorrt's support list for one TensorRT release.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRtSupport {
    pub source: SupportSource,
    pub opset: OpsetRange,
    pub types: TypeSupport,
    pub operators: BTreeMap<String, OperatorSupport>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportSource {
    /// The TensorRT release the list is for (`10.3`).
    pub tensorrt: String,
    pub document: String,
    pub changes: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsetRange {
    pub min: i64,
    pub max: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeSupport {
    /// `TensorProto.DataType` names TensorRT takes.
    pub supported: Vec<String>,
    /// Names it casts down (DOUBLE to FLOAT): a warning.
    pub limited: Vec<String>,
}

/// One operator's row of the support matrix, its restrictions in checkable form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSupport {
    #[serde(default = "yes")]
    pub supported: bool,
    /// The matrix's text, quoted in a refusal.
    pub restriction: Option<String>,
    /// Inputs (by position) that must be initializers or `Constant` outputs.
    #[serde(default)]
    pub initializer_inputs: Vec<usize>,
    /// Allowed numbers of spatial dimensions (entries of `kernel_shape`).
    #[serde(default)]
    pub spatial_ranks: Vec<usize>,
    /// Allowed values of string attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
    /// Outputs (by position) nothing may consume.
    #[serde(default)]
    pub unused_outputs: Vec<usize>,
}

fn yes() -> bool {
    true
}

/// The verdict on one graph.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphVerdict {
    /// The TensorRT release checked against.
    pub tensorrt: String,
    pub opset: Option<i64>,
    /// Nodes per operator.
    pub operators: BTreeMap<String, usize>,
    /// How many optimisation profiles the runtime asks for (0: none checked).
    pub profiles: usize,
    /// Why TensorRT would refuse the graph; empty: it passes.
    pub refusals: Vec<String>,
    /// What TensorRT takes with a loss or at a cost.
    pub warnings: Vec<String>,
}

impl GraphVerdict {
    pub fn passes(&self) -> bool {
        self.refusals.is_empty()
    }
}

impl TensorRtSupport {
    /// The list this binary was built with.
    pub fn bundled() -> &'static Self {
        static PARSED: LazyLock<TensorRtSupport> =
            LazyLock::new(|| TensorRtSupport::parse(SUPPORT_DATA).expect("the bundled TensorRT support data parses"));
        &PARSED
    }

    pub fn parse(text: &str) -> Result<Self, EngineError> {
        let support: Self = toml::from_str(text).map_err(|e| EngineError::SupportData(e.to_string()))?;
        if support.opset.min > support.opset.max {
            return Err(EngineError::SupportData(format!(
                "opset range {}..={} is empty",
                support.opset.min, support.opset.max
            )));
        }
        Ok(support)
    }

    /// The graph's opset, operators and types.
    pub fn check_graph(&self, model: &ModelProto) -> GraphVerdict {
        let trt = &self.source.tensorrt;
        let mut v = GraphVerdict {
            tensorrt: trt.clone(),
            opset: model.default_opset(),
            operators: model.operator_counts(),
            ..Default::default()
        };
        let OpsetRange { min, max } = self.opset;
        match v.opset {
            None => v.refusals.push("the graph imports no opset of the default ONNX domain".into()),
            Some(o) if !(min..=max).contains(&o) => {
                v.refusals.push(format!("opset {o} is outside TensorRT {trt}'s supported range {min}..={max}"))
            }
            Some(_) => {}
        }
        for other in model.opset_import.iter().filter(|o| !is_default_domain(&o.domain)) {
            v.warnings.push(format!("the graph imports opset {} of domain `{}`", other.version, other.domain));
        }
        let constants = constant_names(model.graph());
        let consumed = consumed_names(model.graph());
        let mut seen = HashSet::new();
        for node in model.nodes() {
            if let Some(reason) = self.check_node(node, &constants, &consumed) {
                // One line per operator and reason, not per node: a ViT repeats its block.
                if seen.insert(reason.clone()) {
                    v.refusals.push(format!("{reason} (node {})", node.label()));
                }
            }
        }
        self.check_types(model, &mut v);
        v
    }

    fn check_node(&self, node: &NodeProto, constants: &HashSet<&str>, consumed: &HashSet<&str>) -> Option<String> {
        let trt = &self.source.tensorrt;
        let op = node.qualified_op();
        if !is_default_domain(&node.domain) {
            return Some(format!(
                "operator {op} is outside the standard ONNX domain: TensorRT {trt} would need a plugin for it"
            ));
        }
        let Some(rule) = self.operators.get(&node.op_type) else {
            return Some(format!("operator {op} is not in TensorRT {trt}'s ONNX operator list"));
        };
        let because = || rule.restriction.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        if !rule.supported {
            return Some(format!("operator {op} is not supported by TensorRT {trt}"));
        }
        for &i in &rule.initializer_inputs {
            if let Some(name) = node.input.get(i).filter(|n| !n.is_empty()) {
                if !constants.contains(name.as_str()) {
                    return Some(format!(
                        "{op}: input {i} (`{name}`) is computed, TensorRT {trt} needs a constant{}",
                        because()
                    ));
                }
            }
        }
        if !rule.spatial_ranks.is_empty() {
            if let Some(kernel) = node.attribute("kernel_shape") {
                if !rule.spatial_ranks.contains(&kernel.ints.len()) {
                    return Some(format!(
                        "{op}: {}-D is not supported by TensorRT {trt}{}",
                        kernel.ints.len(),
                        because()
                    ));
                }
            }
        }
        for (name, allowed) in &rule.attributes {
            if let Some(attr) = node.attribute(name) {
                let value = String::from_utf8_lossy(&attr.s);
                if !allowed.iter().any(|a| *a == value) {
                    return Some(format!("{op}: {name} = \"{value}\" is not supported by TensorRT {trt}{}", because()));
                }
            }
        }
        for &i in &rule.unused_outputs {
            if let Some(name) = node.output.get(i).filter(|n| !n.is_empty()) {
                if consumed.contains(name.as_str()) {
                    return Some(format!(
                        "{op}: output {i} (`{name}`) is used, TensorRT {trt} cannot produce it{}",
                        because()
                    ));
                }
            }
        }
        None
    }

    fn check_types(&self, model: &ModelProto, v: &mut GraphVerdict) {
        let graph = model.graph();
        let declared = model
            .inputs()
            .into_iter()
            .chain(model.outputs())
            .map(|t| (format!("`{}`", t.name), t.dtype))
            .chain(
                graph.initializer.iter().map(|t| (format!("initializer `{}`", t.name), dtype_name(t.data_type).into())),
            )
            .chain(
                model.nodes().into_iter().filter(|n| n.op_type == "Cast" && is_default_domain(&n.domain)).filter_map(
                    |n| Some((format!("Cast {}", n.label()), dtype_name(n.attribute("to")?.i as i32).into())),
                ),
            );
        let mut seen = HashSet::new();
        for (what, dtype) in declared {
            if self.types.supported.contains(&dtype) || !seen.insert(dtype.clone()) {
                continue;
            }
            if self.types.limited.contains(&dtype) {
                v.warnings.push(format!("{what} is {dtype}: TensorRT casts it down"));
            } else {
                v.refusals
                    .push(format!("{what} is {dtype}, a type TensorRT {} does not support", self.source.tensorrt));
            }
        }
    }
}

/// The graph's inputs against the manifest's and the optimisation profiles the runtime
/// builds (`options.profiles`): every input fed, every fixed axis asked at its size,
/// every range ordered and non-empty.
pub fn check_profiles(model: &ModelProto, specs: &[TensorSpec], options: &TensorRtOptions, v: &mut GraphVerdict) {
    let graph_inputs = model.inputs();
    for input in &graph_inputs {
        if !specs.iter().any(|s| s.name == input.name) {
            v.refusals.push(format!("graph input `{}` is not in the manifest: nothing would feed it", input.name));
        }
    }
    let mut ranks_agree = true;
    for spec in specs {
        let Some(input) = graph_inputs.iter().find(|i| i.name == spec.name) else {
            v.refusals.push(format!("manifest input `{}` is not an input of the graph", spec.name));
            ranks_agree = false;
            continue;
        };
        let Some(shape) = &input.shape else { continue };
        if shape.len() != spec.shape.len() {
            v.refusals.push(format!(
                "input `{}` has {} axes in the graph, {} in the manifest",
                spec.name,
                shape.len(),
                spec.shape.len()
            ));
            ranks_agree = false;
            continue;
        }
        for (axis, (g, m)) in shape.iter().zip(&spec.shape).enumerate() {
            if let (GraphDim::Fixed(g), Dim::Fixed(m)) = (g, m) {
                if *g as u64 != *m {
                    v.refusals
                        .push(format!("input `{}` axis {axis} is {g} in the graph, {m} in the manifest", spec.name));
                }
            }
        }
    }
    if !ranks_agree {
        return;
    }
    let Some(profiles) = options.profiles(specs) else {
        let open: Vec<String> = specs
            .iter()
            .flat_map(|s| s.shape.iter())
            .filter_map(|d| match d {
                Dim::Dynamic(axis) if !options.dynamic_ranges.contains_key(axis) => Some(format!("`{axis}`")),
                _ => None,
            })
            .collect();
        v.warnings.push(format!(
            "no optimisation profile: the plan gives no range for {}; TensorRT would build an engine per new shape",
            open.join(", ")
        ));
        return;
    };
    v.profiles = profiles.len();
    for (p, profile) in profiles.iter().enumerate() {
        check_profile(p, profile, &graph_inputs, v);
    }
}

fn check_profile(
    p: usize,
    profile: &OptimisationProfile,
    graph_inputs: &[super::graph::GraphTensor],
    v: &mut GraphVerdict,
) {
    for (name, [min, opt, max]) in profile {
        let graph_shape = graph_inputs.iter().find(|i| &i.name == name).and_then(|i| i.shape.as_ref());
        for axis in 0..min.len() {
            let (lo, mid, hi) = (min[axis], opt[axis], max[axis]);
            let at = format!("profile {p}, input `{name}` axis {axis}");
            if lo == 0 || lo > mid || mid > hi {
                v.refusals.push(format!("{at}: min {lo} / opt {mid} / max {hi} is not a range TensorRT accepts"));
            }
            if let Some(GraphDim::Fixed(n)) = graph_shape.and_then(|s| s.get(axis)) {
                if [lo, mid, hi].iter().any(|d| *d as i64 != *n) {
                    v.refusals.push(format!("{at}: asks {lo}..{hi}, the graph fixes it to {n}"));
                }
            }
        }
    }
}

/// Initializers and `Constant` outputs, in the graph and every subgraph.
fn constant_names(graph: &GraphProto) -> HashSet<&str> {
    let mut out: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for node in &graph.node {
        if node.op_type == "Constant" {
            out.extend(node.output.iter().map(String::as_str));
        }
        for attr in &node.attribute {
            for g in attr.g.as_deref().into_iter().chain(&attr.graphs) {
                out.extend(constant_names(g));
            }
        }
    }
    out
}

/// Every name a node reads or the graph returns, in the graph and every subgraph.
fn consumed_names(graph: &GraphProto) -> HashSet<&str> {
    let mut out: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    for node in &graph.node {
        out.extend(node.input.iter().map(String::as_str));
        for attr in &node.attribute {
            for g in attr.g.as_deref().into_iter().chain(&attr.graphs) {
                out.extend(consumed_names(g));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::graph::tests::{model_bytes, node};
    use super::super::graph::{AttributeProto, ModelProto};
    use super::*;
    use prost::Message;

    fn model(opset: i64, nodes: Vec<NodeProto>, initializers: &[&str]) -> ModelProto {
        ModelProto::decode(&model_bytes(opset, nodes, initializers)[..]).unwrap()
    }

    fn with_attr(mut n: NodeProto, name: &str, s: &str, ints: &[i64]) -> NodeProto {
        n.attribute.push(AttributeProto {
            name: name.into(),
            s: s.as_bytes().to_vec(),
            ints: ints.to_vec(),
            ..Default::default()
        });
        n
    }

    #[test]
    fn the_bundled_list_is_for_tensorrt_10_3_and_names_its_source() {
        let s = TensorRtSupport::bundled();
        assert_eq!(s.source.tensorrt, "10.3");
        assert!(s.source.document.contains("onnx-tensorrt"), "{}", s.source.document);
        for op in ["Conv", "MatMul", "Softmax", "LayerNormalization", "Gelu", "Resize"] {
            assert!(s.operators.get(op).is_some_and(|r| r.supported), "{op}");
        }
        assert!((s.opset.min..=s.opset.max).contains(&17), "the exporters write opset 17");
    }

    #[test]
    fn a_plain_graph_passes() {
        let conv = with_attr(node("Conv", &["x", "w"], &["c"]), "kernel_shape", "", &[3, 3]);
        let v = TensorRtSupport::bundled().check_graph(&model(17, vec![conv, node("Relu", &["c"], &["y"])], &["w"]));
        assert!(v.passes(), "{:?}", v.refusals);
        assert_eq!(v.opset, Some(17));
        assert_eq!(v.operators["Conv"], 1);
    }

    #[test]
    fn an_operator_tensorrt_lacks_is_named() {
        let s = TensorRtSupport::bundled();
        let unsupported = s.operators.iter().find(|(_, r)| !r.supported).map(|(op, _)| op.clone()).unwrap();
        let v = s.check_graph(&model(17, vec![node(&unsupported, &["x"], &["y"])], &[]));
        assert!(!v.passes());
        assert!(
            v.refusals[0].contains(&format!("operator {unsupported} is not supported by TensorRT 10.3")),
            "{:?}",
            v.refusals
        );
        let v = s.check_graph(&model(17, vec![node("NoSuchOperator", &["x"], &["y"])], &[]));
        assert!(
            v.refusals[0].contains("NoSuchOperator is not in TensorRT 10.3's ONNX operator list"),
            "{:?}",
            v.refusals
        );
        let mut custom = node("Attention", &["x"], &["y"]);
        custom.domain = "com.microsoft".into();
        let v = s.check_graph(&model(17, vec![custom], &[]));
        assert!(
            v.refusals[0].contains("com.microsoft::Attention") && v.refusals[0].contains("plugin"),
            "{:?}",
            v.refusals
        );
    }

    #[test]
    fn restrictions_that_can_be_seen_statically_are_checked() {
        let s = TensorRtSupport::bundled();
        let v = s.check_graph(&model(s.opset.max + 1, vec![node("Relu", &["x"], &["y"])], &[]));
        assert!(v.refusals[0].contains("outside TensorRT 10.3's supported range"), "{:?}", v.refusals);
        if let Some((op, rule)) = s.operators.iter().find(|(_, r)| r.supported && !r.initializer_inputs.is_empty()) {
            let i = rule.initializer_inputs[0];
            let inputs: Vec<String> = (0..=i).map(|k| format!("in{k}")).collect();
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let v = s.check_graph(&model(17, vec![node(op, &inputs, &["y"])], &[]));
            assert!(v.refusals.iter().any(|r| r.contains("needs a constant")), "{op}: {:?}", v.refusals);
            let v = s.check_graph(&model(17, vec![node(op, &inputs, &["y"])], &inputs));
            assert!(v.passes(), "{op} with constant inputs: {:?}", v.refusals);
        }
        if let Some((op, rule)) = s.operators.iter().find(|(_, r)| r.supported && !r.attributes.is_empty()) {
            let (name, allowed) = rule.attributes.iter().next().unwrap();
            let ok = with_attr(node(op, &["x"], &["y"]), name, &allowed[0], &[]);
            assert!(s.check_graph(&model(17, vec![ok], &[])).passes(), "{op} {name}={}", allowed[0]);
            let bad = with_attr(node(op, &["x"], &["y"]), name, "no-such-mode", &[]);
            let v = s.check_graph(&model(17, vec![bad], &[]));
            assert!(v.refusals.iter().any(|r| r.contains("\"no-such-mode\"")), "{:?}", v.refusals);
        }
    }

    #[test]
    fn profiles_must_fit_the_graph() {
        use emollama_bundle::DType;
        let m = model(17, vec![node("Relu", &["x"], &["y"])], &[]);
        let spec = |dims: Vec<Dim>| vec![TensorSpec { name: "x".into(), dtype: DType::F32, shape: dims }];
        let dynamic = |a: &str| Dim::Dynamic(a.into());
        let manifest = spec(vec![dynamic("batch"), Dim::Fixed(3), dynamic("height"), dynamic("width")]);
        let mut options = TensorRtOptions::default();
        for axis in ["batch", "height", "width"] {
            options.dynamic_ranges.insert(axis.into(), [1, 4, 8]);
        }
        let mut v = GraphVerdict::default();
        check_profiles(&m, &manifest, &options, &mut v);
        assert!(v.refusals.is_empty(), "{:?}", v.refusals);
        assert_eq!(v.profiles, 1);

        options.dynamic_ranges.insert("height".into(), [8, 4, 2]);
        let mut v = GraphVerdict::default();
        check_profiles(&m, &manifest, &options, &mut v);
        assert!(v.refusals.iter().any(|r| r.contains("axis 2") && r.contains("not a range")), "{:?}", v.refusals);

        // The manifest leaves an axis open that the graph fixes: the profile must ask its size.
        options.dynamic_ranges.insert("height".into(), [1, 4, 8]);
        options.dynamic_ranges.insert("channels".into(), [1, 2, 4]);
        let open = spec(vec![dynamic("batch"), dynamic("channels"), dynamic("height"), dynamic("width")]);
        let mut v = GraphVerdict::default();
        check_profiles(&m, &open, &options, &mut v);
        assert!(v.refusals.iter().any(|r| r.contains("the graph fixes it to 3")), "{:?}", v.refusals);

        let mut v = GraphVerdict::default();
        check_profiles(&m, &spec(vec![dynamic("batch"), Dim::Fixed(3)]), &options, &mut v);
        assert!(v.refusals.iter().any(|r| r.contains("4 axes in the graph, 2 in the manifest")), "{:?}", v.refusals);

        let mut v = GraphVerdict::default();
        let unranged = spec(vec![dynamic("frames"), Dim::Fixed(3), dynamic("height"), dynamic("width")]);
        check_profiles(&m, &unranged, &options, &mut v);
        assert!(v.refusals.is_empty() && v.warnings[0].contains("`frames`"), "{v:?}");
    }
}
