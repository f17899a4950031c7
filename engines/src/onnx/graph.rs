//! What an ONNX file's graph holds, read without ONNX Runtime: its opsets, nodes, inputs,
//! outputs and initializer names, for checks that need no session (the TensorRT support
//! check, `compile --check`).
//!
//! Only the fields those checks read are declared, after `onnx.proto` (ONNX 1.17, the
//! field numbers are stable); protobuf skips the others, so a weight's bytes are stepped
//! over, never copied. The file is mapped, not read: a 2 GB graph costs no 2 GB of RAM.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;

use crate::EngineError;

/// `ModelProto`: the opsets it imports and its graph.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Empty (or `ai.onnx`): the default domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    pub domain: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// A subgraph (`If`, `Loop`, `Scan`): its nodes are checked too.
    #[prost(message, optional, boxed, tag = "6")]
    pub g: Option<Box<GraphProto>>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
}

/// A tensor's name, type and dims; its data (`raw_data` and the typed lists) is skipped.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto`: only its tensor case (`oneof value`, field 1) is read.
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<DimensionProto>,
}

/// One dimension: a number or a symbolic name (`oneof value` in `onnx.proto`).
#[derive(Clone, PartialEq, Message)]
pub struct DimensionProto {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// One axis of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphDim {
    Fixed(i64),
    Named(String),
    /// Neither a number nor a name (a dimension the exporter left open).
    Unknown,
}

impl std::fmt::Display for GraphDim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Named(name) => f.write_str(name),
            Self::Unknown => f.write_str("?"),
        }
    }
}

/// A graph input or output as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphTensor {
    pub name: String,
    /// ONNX `TensorProto.DataType` name (`FLOAT`, `INT64`, …).
    pub dtype: String,
    /// `None`: the file gives no shape.
    pub shape: Option<Vec<GraphDim>>,
}

/// Reads and decodes one ONNX file. Errors name the file.
pub fn read_model(path: &Path) -> Result<ModelProto, EngineError> {
    let invalid = |reason: String| EngineError::InvalidGraph { path: path.to_path_buf(), reason };
    // A regular file only, opened without blocking (a FIFO in its place must not hang the
    // check); the map costs no memory, so the size is not capped.
    let (file, _) = emollama_bundle::files::open_regular(path, u64::MAX, emollama_bundle::files::Links::Follow)
        .map_err(|e| invalid(e.to_string()))?;
    // SAFETY: the map is read-only and dropped before this returns; a file truncated
    // underneath it would fault, which a bundle's files (written once, renamed into
    // place) never are.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| invalid(e.to_string()))?;
    let model = ModelProto::decode(&map[..]).map_err(|e| invalid(format!("not an ONNX model: {e}")))?;
    if model.graph.is_none() {
        return Err(invalid("an ONNX model without a graph".into()));
    }
    Ok(model)
}

impl ModelProto {
    pub fn graph(&self) -> &GraphProto {
        static EMPTY: GraphProto = GraphProto {
            node: Vec::new(),
            name: String::new(),
            initializer: Vec::new(),
            input: Vec::new(),
            output: Vec::new(),
        };
        self.graph.as_ref().unwrap_or(&EMPTY)
    }

    /// The version of the default (`ai.onnx`) domain's opset.
    pub fn default_opset(&self) -> Option<i64> {
        self.opset_import.iter().find(|o| is_default_domain(&o.domain)).map(|o| o.version)
    }

    /// Every node of the graph and its subgraphs, outer graph first.
    pub fn nodes(&self) -> Vec<&NodeProto> {
        let mut out = Vec::new();
        collect_nodes(self.graph(), &mut out);
        out
    }

    /// How many nodes of each operator (`domain::Op` outside the default domain).
    pub fn operator_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for node in self.nodes() {
            *counts.entry(node.qualified_op()).or_default() += 1;
        }
        counts
    }

    /// The graph's real inputs: initializers listed as inputs (older exporters) left out.
    pub fn inputs(&self) -> Vec<GraphTensor> {
        let graph = self.graph();
        let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        graph.input.iter().filter(|v| !initializers.contains(v.name.as_str())).map(GraphTensor::from).collect()
    }

    pub fn outputs(&self) -> Vec<GraphTensor> {
        self.graph().output.iter().map(GraphTensor::from).collect()
    }
}

fn collect_nodes<'a>(graph: &'a GraphProto, out: &mut Vec<&'a NodeProto>) {
    for node in &graph.node {
        out.push(node);
        for attr in &node.attribute {
            if let Some(g) = &attr.g {
                collect_nodes(g, out);
            }
            for g in &attr.graphs {
                collect_nodes(g, out);
            }
        }
    }
}

pub fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

impl NodeProto {
    /// `Conv`, or `com.microsoft::Attention` outside the default domain.
    pub fn qualified_op(&self) -> String {
        if is_default_domain(&self.domain) {
            self.op_type.clone()
        } else {
            format!("{}::{}", self.domain, self.op_type)
        }
    }

    pub fn attribute(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }

    /// How the node is named in a report: its name, or its first output.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            self.output.first().map_or("(unnamed)", String::as_str)
        } else {
            &self.name
        }
    }
}

impl From<&ValueInfoProto> for GraphTensor {
    fn from(v: &ValueInfoProto) -> Self {
        let tensor = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let dtype = tensor.map_or("UNDEFINED".into(), |t| dtype_name(t.elem_type).into());
        let shape = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| match (d.dim_value, &d.dim_param) {
                    (Some(n), _) => GraphDim::Fixed(n),
                    (None, Some(name)) if !name.is_empty() => GraphDim::Named(name.clone()),
                    _ => GraphDim::Unknown,
                })
                .collect()
        });
        Self { name: v.name.clone(), dtype, shape }
    }
}

/// `TensorProto.DataType` names, by number (`onnx.proto`).
pub fn dtype_name(code: i32) -> &'static str {
    const NAMES: [&str; 24] = [
        "UNDEFINED",
        "FLOAT",
        "UINT8",
        "INT8",
        "UINT16",
        "INT16",
        "INT32",
        "INT64",
        "STRING",
        "BOOL",
        "FLOAT16",
        "DOUBLE",
        "UINT32",
        "UINT64",
        "COMPLEX64",
        "COMPLEX128",
        "BFLOAT16",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "UINT4",
        "INT4",
        "FLOAT4E2M1",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNDEFINED")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: format!("/{op}_0"),
            op_type: op.into(),
            ..Default::default()
        }
    }

    pub fn value(name: &str, elem_type: i32, dims: &[Result<i64, &str>]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| match d {
                Ok(n) => DimensionProto { dim_value: Some(*n), dim_param: None },
                Err(p) => DimensionProto { dim_value: None, dim_param: Some(p.to_string()) },
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto { elem_type, shape: Some(TensorShapeProto { dim }) }),
            }),
        }
    }

    /// A model as the exporters write them, encoded to real ONNX protobuf bytes.
    pub fn model_bytes(opset: i64, nodes: Vec<NodeProto>, initializers: &[&str]) -> Vec<u8> {
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
            graph: Some(GraphProto {
                node: nodes,
                name: "test".into(),
                initializer: initializers
                    .iter()
                    .map(|n| TensorProto { dims: vec![4], data_type: 1, name: n.to_string() })
                    .collect(),
                input: vec![value("x", 1, &[Err("batch"), Ok(3), Err("height"), Err("width")])],
                output: vec![value("y", 1, &[Err("batch"), Ok(3)])],
            }),
        };
        model.encode_to_vec()
    }

    #[test]
    fn a_model_reads_back_with_its_weights_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let bytes = model_bytes(17, vec![node("Conv", &["x", "w"], &["c"]), node("Relu", &["c"], &["y"])], &["w"]);
        std::fs::write(&path, bytes).unwrap();
        let model = read_model(&path).unwrap();
        assert_eq!(model.default_opset(), Some(17));
        assert_eq!(model.operator_counts().into_iter().collect::<Vec<_>>(), [("Conv".into(), 1), ("Relu".into(), 1)]);
        let inputs = model.inputs();
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].dtype, "FLOAT");
        assert_eq!(
            inputs[0].shape.as_deref().unwrap(),
            [
                GraphDim::Named("batch".into()),
                GraphDim::Fixed(3),
                GraphDim::Named("height".into()),
                GraphDim::Named("width".into())
            ]
        );
    }

    #[test]
    fn what_is_not_a_model_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, b"\xff\xff\xff not protobuf").unwrap();
        let err = read_model(&path).unwrap_err().to_string();
        assert!(err.contains("m.onnx") && err.contains("not an ONNX model"), "{err}");
        let err = read_model(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        // A FIFO is refused at once, not waited on.
        let fifo = dir.path().join("fifo.onnx");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = read_model(&fifo).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
    }
}
