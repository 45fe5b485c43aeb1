//! Typed access to a node's attributes, failing loudly on anything unexpected.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::onnx::host::HostTensor;
use crate::onnx::proto::Attr;

/// A node's attributes with the node's identity, for error messages. Every attribute must be
/// read by the op's parser; [`Attrs::finish`] rejects the ones nobody read.
pub(crate) struct Attrs<'a> {
    pub map: &'a HashMap<String, Attr>,
    pub node: &'a str,
    pub op: &'a str,
    pub opset: i64,
    used: RefCell<HashSet<String>>,
}

impl<'a> Attrs<'a> {
    pub fn new(map: &'a HashMap<String, Attr>, node: &'a str, op: &'a str, opset: i64) -> Self {
        Self {
            map,
            node,
            op,
            opset,
            used: RefCell::new(HashSet::new()),
        }
    }

    fn get(&self, name: &str) -> Option<&'a Attr> {
        self.used.borrow_mut().insert(name.to_string());
        self.map.get(name)
    }

    /// An error naming this node.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Graph {
            node: self.node.to_string(),
            op: self.op.to_string(),
            msg: msg.into(),
        }
    }

    /// An "unsupported" error naming this node, op and opset.
    pub fn unsupported(&self, detail: impl std::fmt::Display) -> Error {
        Error::UnsupportedOp {
            op: self.op.to_string(),
            node: self.node.to_string(),
            opset: self.opset,
            detail: format!(": {detail}"),
        }
    }

    fn wrong_type(&self, name: &str, want: &str) -> Error {
        self.err(format!("attribute '{name}' should be {want}"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        match self.get(name) {
            None => Ok(default),
            Some(Attr::Int(v)) => Ok(*v),
            Some(_) => Err(self.wrong_type(name, "an integer")),
        }
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32> {
        match self.get(name) {
            None => Ok(default),
            Some(Attr::Float(v)) => Ok(*v),
            Some(Attr::Int(v)) => Ok(*v as f32),
            Some(_) => Err(self.wrong_type(name, "a float")),
        }
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.wrong_type(name, "a list of integers")),
        }
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Floats(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.wrong_type(name, "a list of floats")),
        }
    }

    pub fn string(&self, name: &str, default: &str) -> Result<String> {
        match self.get(name) {
            None => Ok(default.to_string()),
            Some(Attr::Str(v)) => Ok(v.clone()),
            Some(_) => Err(self.wrong_type(name, "a string")),
        }
    }

    pub fn tensor(&self, name: &str) -> Result<Option<HostTensor>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Tensor(t)) => Ok(Some(t.clone())),
            Some(_) => Err(self.wrong_type(name, "a tensor")),
        }
    }

    /// Mark attributes that are legitimately ignored at inference (e.g. BatchNorm momentum).
    pub fn ignore(&self, names: &[&str]) {
        for n in names {
            self.used.borrow_mut().insert((*n).to_string());
        }
    }

    /// Fail on any attribute the op's parser did not read.
    pub fn finish(&self) -> Result<()> {
        let used = self.used.borrow();
        let mut unknown: Vec<&String> = self.map.keys().filter(|k| !used.contains(*k)).collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(name) => Err(self.unsupported(format!("attribute '{name}'"))),
        }
    }
}
