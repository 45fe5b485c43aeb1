//! Reading an ONNX file: the protobuf, external data, initializers and attributes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use onnx_ir::{AttributeProto, AttributeType, Message, ModelProto, TensorProto};

use crate::error::{Error, Result};
use crate::onnx::host::{HostData, HostTensor};

/// ONNX `TensorProto.DataType` codes the interpreter reads.
pub(crate) mod dtype {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const DOUBLE: i32 = 11;

    /// The ONNX spelling of a data type code, for messages.
    pub fn name(code: i32) -> &'static str {
        match code {
            1 => "FLOAT",
            2 => "UINT8",
            3 => "INT8",
            4 => "UINT16",
            5 => "INT16",
            6 => "INT32",
            7 => "INT64",
            8 => "STRING",
            9 => "BOOL",
            10 => "FLOAT16",
            11 => "DOUBLE",
            12 => "UINT32",
            13 => "UINT64",
            14 => "COMPLEX64",
            15 => "COMPLEX128",
            16 => "BFLOAT16",
            _ => "UNDEFINED",
        }
    }
}

/// Read and decode an ONNX file, failing with a message that names the file.
pub(crate) fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::format(path, "empty file, not an ONNX model"));
    }
    let model = ModelProto::parse_from_bytes(&bytes).map_err(|e| {
        Error::format(
            path,
            format!("not a valid ONNX model (truncated or not ONNX protobuf): {e}"),
        )
    })?;
    let graph = model.graph.as_ref();
    if model.ir_version <= 0 || graph.is_none_or(|g| g.node.is_empty()) {
        return Err(Error::format(
            path,
            "not an ONNX model: no IR version or no graph nodes (truncated file or another protobuf?)",
        ));
    }
    Ok(model)
}

/// Where external tensor data is looked up, and the files already read.
pub(crate) struct ExternalData {
    dir: PathBuf,
    model_path: PathBuf,
    files: HashMap<String, Vec<u8>>,
}

impl ExternalData {
    pub(crate) fn new(model_path: &Path) -> Self {
        let dir = model_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            dir,
            model_path: model_path.to_path_buf(),
            files: HashMap::new(),
        }
    }

    fn bytes(&mut self, tensor: &TensorProto) -> Result<Vec<u8>> {
        let mut location = None;
        let mut offset = 0usize;
        let mut length = None;
        for entry in &tensor.external_data {
            let parse = |v: &str| {
                v.parse::<usize>().map_err(|_| {
                    Error::format(
                        &self.model_path,
                        format!(
                            "tensor '{}': bad external data {} '{v}'",
                            tensor.name, entry.key
                        ),
                    )
                })
            };
            match entry.key.as_str() {
                "location" => location = Some(entry.value.clone()),
                "offset" => offset = parse(&entry.value)?,
                "length" => length = Some(parse(&entry.value)?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| {
            Error::format(
                &self.model_path,
                format!(
                    "tensor '{}' is stored externally but names no location",
                    tensor.name
                ),
            )
        })?;
        if location.contains("..") || Path::new(&location).is_absolute() {
            return Err(Error::format(
                &self.model_path,
                format!(
                    "tensor '{}': external data location '{location}' leaves the model's folder",
                    tensor.name
                ),
            ));
        }
        if !self.files.contains_key(&location) {
            let file = self.dir.join(&location);
            let data = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
            self.files.insert(location.clone(), data);
        }
        let data = &self.files[&location];
        let end = match length {
            Some(len) => offset + len,
            None => data.len(),
        };
        if end > data.len() || offset > end {
            return Err(Error::format(
                self.dir.join(&location),
                format!(
                    "external data of tensor '{}' runs to byte {end} but the file has {} bytes (truncated?)",
                    tensor.name,
                    data.len()
                ),
            ));
        }
        Ok(data[offset..end].to_vec())
    }
}

/// Convert an ONNX tensor (initializer or attribute) into a host tensor.
pub(crate) fn tensor_from_proto(
    tensor: &TensorProto,
    external: &mut ExternalData,
    what: &str,
) -> Result<HostTensor> {
    let shape: Vec<usize> = tensor
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                Error::format(
                    &external.model_path,
                    format!("{what}: negative dimension {d}"),
                )
            })
        })
        .collect::<Result<_>>()?;
    let count: usize = shape.iter().product();
    let is_external = tensor.data_location.value() == 1;
    let raw: Option<Vec<u8>> = if is_external {
        Some(external.bytes(tensor)?)
    } else if !tensor.raw_data.is_empty() {
        Some(tensor.raw_data.to_vec())
    } else {
        None
    };
    let bad_len = |got: usize| {
        Error::format(
            &external.model_path,
            format!(
                "{what}: shape {shape:?} needs {count} values of {} but the data holds {got}",
                dtype::name(tensor.data_type)
            ),
        )
    };
    macro_rules! from_raw {
        ($ty:ty, $n:expr) => {{
            let raw = raw.as_ref().expect("raw checked");
            if raw.len() != count * $n {
                return Err(bad_len(raw.len() / $n));
            }
            raw.chunks_exact($n)
                .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk size")))
                .collect::<Vec<$ty>>()
        }};
    }
    let data = match tensor.data_type {
        dtype::FLOAT => HostData::F32(if raw.is_some() {
            from_raw!(f32, 4)
        } else {
            tensor.float_data.clone()
        }),
        dtype::DOUBLE => HostData::F32(if raw.is_some() {
            from_raw!(f64, 8).into_iter().map(|v| v as f32).collect()
        } else {
            tensor.double_data.iter().map(|&v| v as f32).collect()
        }),
        dtype::INT64 => HostData::I64(if raw.is_some() {
            from_raw!(i64, 8)
        } else {
            tensor.int64_data.clone()
        }),
        dtype::INT32 => HostData::I64(if raw.is_some() {
            from_raw!(i32, 4).into_iter().map(i64::from).collect()
        } else {
            tensor.int32_data.iter().map(|&v| i64::from(v)).collect()
        }),
        dtype::INT8 => HostData::I64(if raw.is_some() {
            from_raw!(i8, 1).into_iter().map(i64::from).collect()
        } else {
            tensor.int32_data.iter().map(|&v| i64::from(v)).collect()
        }),
        dtype::UINT8 | dtype::BOOL => HostData::I64(if raw.is_some() {
            from_raw!(u8, 1).into_iter().map(i64::from).collect()
        } else {
            tensor.int32_data.iter().map(|&v| i64::from(v)).collect()
        }),
        other => {
            return Err(Error::format(
                &external.model_path,
                format!("{what}: data type {} is not supported", dtype::name(other)),
            ));
        }
    };
    if data.len() != count {
        return Err(bad_len(data.len()));
    }
    if let HostData::F32(values) = &data
        && let Some(i) = values.iter().position(|v| !v.is_finite())
    {
        return Err(Error::format(
            &external.model_path,
            format!(
                "{what}: value {} at flat index {i} is not finite (NaN or infinite weights)",
                values[i]
            ),
        ));
    }
    Ok(HostTensor { shape, data })
}

/// A node attribute, decoded.
#[derive(Clone, Debug)]
pub(crate) enum Attr {
    Float(f32),
    Int(i64),
    Str(String),
    Tensor(HostTensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
}

/// Decode a node's attributes; graph-valued and other exotic attributes are an error.
pub(crate) fn attributes(
    attrs: &[AttributeProto],
    external: &mut ExternalData,
    node: &str,
    op: &str,
    opset: i64,
) -> Result<HashMap<String, Attr>> {
    let mut out = HashMap::new();
    for a in attrs {
        let ty = a.type_.enum_value().ok();
        let value = match ty {
            Some(AttributeType::FLOAT) => Attr::Float(a.f),
            Some(AttributeType::INT) => Attr::Int(a.i),
            Some(AttributeType::STRING) => Attr::Str(String::from_utf8_lossy(&a.s).into_owned()),
            Some(AttributeType::TENSOR) => {
                let t = a.t.as_ref().ok_or_else(|| Error::Graph {
                    node: node.to_string(),
                    op: op.to_string(),
                    msg: format!("attribute '{}' has no tensor", a.name),
                })?;
                Attr::Tensor(tensor_from_proto(
                    t,
                    external,
                    &format!("node '{node}' attribute '{}'", a.name),
                )?)
            }
            Some(AttributeType::FLOATS) => Attr::Floats(a.floats.clone()),
            Some(AttributeType::INTS) => Attr::Ints(a.ints.clone()),
            _ => {
                return Err(Error::UnsupportedOp {
                    op: op.to_string(),
                    node: node.to_string(),
                    opset,
                    detail: format!(": attribute '{}' of type {:?}", a.name, a.type_),
                });
            }
        };
        out.insert(a.name.clone(), value);
    }
    Ok(out)
}
