//! Writing ONNX: a small graph builder over the protobuf types, enough for the models the
//! project trains itself (and for synthetic graphs in tests and benchmarks).

use std::path::Path;

use onnx_ir::{
    AttributeProto, AttributeType, GraphProto, Message, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};

use crate::error::{Error, Result};
use crate::onnx::proto::dtype;

/// An attribute value for [`GraphBuilder::node`].
#[derive(Clone, Debug)]
pub enum AttrValue {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(String),
}

/// Builds an ONNX model node by node.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
}

fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let mut vi = ValueInfoProto::new();
    vi.name = name.to_string();
    let mut tp = onnx_ir::TypeProto::new();
    let tt = tp.mut_tensor_type();
    tt.elem_type = dtype::FLOAT;
    let shape = tt.shape.mut_or_insert_default();
    for d in dims {
        shape.dim.push(Default::default());
        let dim = shape.dim.last_mut().expect("just pushed");
        match d {
            Some(v) => dim.set_dim_value(*v as i64),
            None => dim.set_dim_param("N".to_string()),
        }
    }
    vi.type_ = Some(tp).into();
    vi
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        let mut graph = GraphProto::new();
        graph.name = name.to_string();
        Self { graph, counter: 0 }
    }

    /// Declare the float input (`None` dims are symbolic, e.g. the batch).
    pub fn input(&mut self, name: &str, dims: &[Option<usize>]) -> &mut Self {
        self.graph.input.push(value_info(name, dims));
        self
    }

    /// Declare the float output.
    pub fn output(&mut self, name: &str, dims: &[Option<usize>]) -> &mut Self {
        self.graph.output.push(value_info(name, dims));
        self
    }

    /// Add a float initializer.
    pub fn init_f32(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let mut t = TensorProto::new();
        t.name = name.to_string();
        t.dims = dims.iter().map(|&d| d as i64).collect();
        t.data_type = dtype::FLOAT;
        t.raw_data = values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into();
        self.graph.initializer.push(t);
        name.to_string()
    }

    /// Add an int64 initializer.
    pub fn init_i64(&mut self, name: &str, dims: &[usize], values: &[i64]) -> String {
        let mut t = TensorProto::new();
        t.name = name.to_string();
        t.dims = dims.iter().map(|&d| d as i64).collect();
        t.data_type = dtype::INT64;
        t.raw_data = values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into();
        self.graph.initializer.push(t);
        name.to_string()
    }

    /// Add a node with one output; returns the output's name (`out`, or a generated one).
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        out: Option<&str>,
        attrs: &[(&str, AttrValue)],
    ) -> String {
        let output = out.map_or_else(
            || format!("{}_{}_out", op.to_lowercase(), self.counter + 1),
            str::to_string,
        );
        self.node_outputs(op, inputs, &[&output], attrs);
        output
    }

    /// Add a node with the named outputs (Split, LayerNormalization's statistics).
    pub fn node_outputs(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: &[(&str, AttrValue)],
    ) {
        self.counter += 1;
        let mut n = NodeProto::new();
        n.name = format!("{}_{}", op.to_lowercase(), self.counter);
        n.op_type = op.to_string();
        n.input = inputs.iter().map(|s| (*s).to_string()).collect();
        n.output = outputs.iter().map(|s| (*s).to_string()).collect();
        for (name, v) in attrs {
            let mut a = AttributeProto::new();
            a.name = (*name).to_string();
            match v {
                AttrValue::Int(i) => {
                    a.i = *i;
                    a.type_ = AttributeType::INT.into();
                }
                AttrValue::Float(f) => {
                    a.f = *f;
                    a.type_ = AttributeType::FLOAT.into();
                }
                AttrValue::Ints(v) => {
                    a.ints = v.clone();
                    a.type_ = AttributeType::INTS.into();
                }
                AttrValue::Str(s) => {
                    a.s = s.as_bytes().to_vec().into();
                    a.type_ = AttributeType::STRING.into();
                }
            }
            n.attribute.push(a);
        }
        self.graph.node.push(n);
    }

    /// The finished model at `opset`.
    pub fn build(self, opset: i64) -> ModelProto {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.producer_name = "cepa".to_string();
        m.producer_version = env!("CARGO_PKG_VERSION").to_string();
        m.opset_import.push(Default::default());
        m.opset_import.last_mut().expect("just pushed").version = opset;
        m.graph = Some(self.graph).into();
        m
    }
}

/// Serialise a model to a file.
pub fn save_model(model: &ModelProto, path: &Path) -> Result<()> {
    let bytes = model
        .write_to_bytes()
        .map_err(|e| Error::format(path, format!("cannot serialise ONNX: {e}")))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
