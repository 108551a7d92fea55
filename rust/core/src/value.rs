//! What a model takes and returns, in the general path.
//!
//! A TorchScript `forward` may return a tensor, a tuple or list (of tensors or of anything
//! below), a `Dict[str, Tensor]`, or a list of per-row dicts (torchvision's detection models);
//! an AOTInductor package returns its outputs flattened into a list of tensors. [`Value`] is
//! that tree; an output's `from` path ([`crate::spec::general::FromPath`]) selects a node.

use tch::Tensor;

use crate::spec::general::Step;

/// One argument of `forward`.
#[derive(Debug)]
pub enum ModelInput {
    /// A batch: the first dimension is the row.
    Batch(Tensor),
    /// `List[Tensor]`, one per row (`ragged: "list"`).
    List(Vec<Tensor>),
}

/// A model's result.
#[derive(Debug)]
pub enum Value {
    Tensor(Tensor),
    /// A tuple or a list.
    List(Vec<Value>),
    /// A dict with string keys, in the model's order.
    Dict(Vec<(String, Value)>),
    /// A number that is not a tensor (`float` or `int` in TorchScript).
    Scalar(f64),
    /// `None`, a string or anything else no output can read; the text says what it was.
    Other(String),
}

impl Value {
    /// The node at `steps`; the error names the first step that does not exist and what was
    /// there instead.
    pub fn select(&self, steps: &[Step]) -> std::result::Result<&Value, String> {
        let mut v = self;
        let mut walked = String::new();
        for step in steps {
            let next = match (v, step) {
                (Value::List(items), Step::Index(i)) => items.get(*i),
                (Value::Dict(items), Step::Key(k)) => {
                    items.iter().find(|(key, _)| key == k).map(|(_, v)| v)
                }
                _ => None,
            };
            let Some(next) = next else {
                return Err(format!(
                    "`from` {walked}{step}: the model returned {} at {}",
                    v.describe(),
                    if walked.is_empty() {
                        "the top"
                    } else {
                        &walked
                    },
                ));
            };
            walked.push_str(&step.to_string());
            v = next;
        }
        Ok(v)
    }

    /// A short description for messages: "a tensor [4, 10] float", "a tuple of 2", "a dict
    /// with keys boxes, labels, scores".
    pub fn describe(&self) -> String {
        match self {
            Value::Tensor(t) => format!("a tensor {:?} {:?}", t.size(), t.kind()),
            Value::List(items) => format!("a tuple/list of {}", items.len()),
            Value::Dict(items) => format!(
                "a dict with keys {}",
                items
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Scalar(x) => format!("the number {x}"),
            Value::Other(what) => what.clone(),
        }
    }
}
