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

    /// Element `index` of what a method returned, a lone tensor being element 0 (version 1's
    /// `output_index`: a model returning one tensor and one returning a tuple read alike).
    pub fn element(&self, index: usize) -> std::result::Result<&Value, String> {
        match self {
            Value::Tensor(_) if index == 0 => Ok(self),
            Value::List(items) => items.get(index).ok_or_else(|| {
                format!(
                    "output_index {index} is out of range: the model returns {} outputs",
                    items.len()
                )
            }),
            other => Err(format!(
                "output_index {index}: the model returned {}, where a tensor or a tuple of \
                 tensors was expected",
                other.describe()
            )),
        }
    }

    /// This value cut into consecutive row ranges of `sizes` rows each (a pass over several
    /// jobs' rows, split back per job): every tensor whose dim 0 is `sizes`' total is narrowed
    /// along dim 0; tuples, lists and dicts are split item by item, keeping their shape.
    ///
    /// `None` when some part is not batched by row (a tensor of another dim 0 or none, a
    /// number, `None`): the caller then runs each job alone. A per-row list (detection
    /// models' list of dicts) is `None` too: a tuple and a list look the same here.
    pub fn split(&self, sizes: &[usize]) -> Option<Vec<Value>> {
        let total: usize = sizes.iter().sum();
        match self {
            Value::Tensor(t) => {
                if t.dim() == 0 || t.size()[0] != total as i64 {
                    return None;
                }
                let mut start = 0i64;
                sizes
                    .iter()
                    .map(|&n| {
                        let part = t.f_narrow(0, start, n as i64).ok()?;
                        start += n as i64;
                        Some(Value::Tensor(part))
                    })
                    .collect()
            }
            Value::List(items) => {
                let mut parts: Vec<Vec<Value>> = sizes.iter().map(|_| Vec::new()).collect();
                for item in items {
                    for (part, piece) in parts.iter_mut().zip(item.split(sizes)?) {
                        part.push(piece);
                    }
                }
                Some(parts.into_iter().map(Value::List).collect())
            }
            Value::Dict(items) => {
                let mut parts: Vec<Vec<(String, Value)>> =
                    sizes.iter().map(|_| Vec::new()).collect();
                for (key, item) in items {
                    for (part, piece) in parts.iter_mut().zip(item.split(sizes)?) {
                        part.push((key.clone(), piece));
                    }
                }
                Some(parts.into_iter().map(Value::Dict).collect())
            }
            Value::Scalar(_) | Value::Other(_) => None,
        }
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

#[cfg(test)]
mod tests {
    // A failed unwrap is a failed test, with its location.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rows(t: &Value) -> Vec<f32> {
        match t {
            Value::Tensor(t) => Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap(),
            other => panic!("not a tensor: {}", other.describe()),
        }
    }

    #[test]
    fn split_cuts_every_batched_tensor_by_rows_and_keeps_the_tree() {
        let x =
            Tensor::from_slice(&[0f32, 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11.]).view([6, 2]);
        let y = Tensor::from_slice(&[10f32, 11., 12., 13., 14., 15.]);
        let v = Value::List(vec![
            Value::Tensor(x),
            Value::Dict(vec![("y".into(), Value::Tensor(y))]),
        ]);
        let parts = v.split(&[1, 0, 3, 2]).unwrap();
        assert_eq!(parts.len(), 4);
        let firsts: Vec<Vec<f32>> = parts
            .iter()
            .map(|p| rows(p.select(&[Step::Index(0)]).unwrap()))
            .collect();
        assert_eq!(
            firsts,
            vec![
                vec![0., 1.],
                vec![],
                vec![2., 3., 4., 5., 6., 7.],
                vec![8., 9., 10., 11.]
            ]
        );
        let ys: Vec<Vec<f32>> = parts
            .iter()
            .map(|p| rows(p.select(&[Step::Index(1), Step::Key("y".into())]).unwrap()))
            .collect();
        assert_eq!(
            ys,
            vec![vec![10.], vec![], vec![11., 12., 13.], vec![14., 15.]]
        );
        match &parts[2] {
            Value::List(items) => match &items[0] {
                Value::Tensor(t) => assert_eq!(t.size(), vec![3, 2]),
                other => panic!("{}", other.describe()),
            },
            other => panic!("{}", other.describe()),
        }
    }

    #[test]
    fn split_refuses_outputs_not_batched_by_row() {
        let batched = || Value::Tensor(Tensor::zeros([5, 3], (tch::Kind::Float, tch::Device::Cpu)));
        // Another dim 0, a 0-dim tensor, a number: not per row.
        let other_rows = Value::Tensor(Tensor::zeros([4, 3], (tch::Kind::Float, tch::Device::Cpu)));
        assert!(other_rows.split(&[2, 3]).is_none());
        assert!(Value::Tensor(Tensor::from(1f32)).split(&[2, 3]).is_none());
        assert!(
            Value::List(vec![batched(), Value::Scalar(1.0)])
                .split(&[2, 3])
                .is_none()
        );
        assert!(Value::Other("None".into()).split(&[5]).is_none());
        assert_eq!(batched().split(&[2, 3]).unwrap().len(), 2);
    }
}
