//! `post`: softmax, sigmoid and argmax on a batch tensor `[rows, ...]`, with the declared
//! axis counted per row (axis `a >= 0` is batch axis `a + 1`; negative axes are the same).

use tch::{Kind, Tensor};

use crate::spec::general::{PostKind, PostOp};

/// Applies `post` in order to `t` (`[rows, ...]`). softmax and sigmoid compute in float32
/// (float64 when the model returned float64: no precision is thrown away); argmax gives int64
/// indices, the first on ties like `torch.argmax`, and removes its axis. Errors: an axis out
/// of the per-row range, or a per-row scalar given to softmax or argmax.
pub fn apply(t: &Tensor, post: &[PostOp]) -> Result<Tensor, String> {
    let mut t = t.shallow_clone();
    for (k, p) in post.iter().enumerate() {
        let rank = t.dim() as i64 - 1;
        let name = op_name(p.op);
        let a = p.axis();
        if p.op != PostKind::Sigmoid {
            if rank < 1 {
                return Err(format!(
                    "post[{k}] {name} needs an axis, but each row is a single value (a tensor \
                     {:?})",
                    t.size()
                ));
            }
            if a >= rank || a < -rank {
                return Err(format!(
                    "post[{k}] {name} axis {} is out of range: each row is a tensor {:?} ({rank} \
                     dims)",
                    a,
                    &t.size()[1..]
                ));
            }
        }
        let axis = if a >= 0 { a + 1 } else { a };
        let r = match p.op {
            PostKind::Softmax => t.f_softmax(axis, float_kind(&t)),
            PostKind::Sigmoid => t.f_to_kind(float_kind(&t)).and_then(|x| x.f_sigmoid()),
            // torch.max(dim).indices is torch.argmax (the first index on ties, NaN the
            // largest) and, over a non-last axis, several times faster on the CPU.
            PostKind::Argmax => t.f_max_dim(axis, false).map(|(_, i)| i),
            // Issue 18 (contract stub): pooling over a mask and L2 normalisation.
            PostKind::MeanPool | PostKind::ClsPool | PostKind::MaxPool | PostKind::L2Normalize => {
                return Err(format!("post[{k}] {name} is not built yet"));
            }
        };
        t = r.map_err(|e| format!("post[{k}] {name} on a tensor {:?}: {e}", t.size()))?;
    }
    Ok(t)
}

fn float_kind(t: &Tensor) -> Kind {
    if t.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

pub(crate) fn op_name(op: PostKind) -> &'static str {
    match op {
        PostKind::Softmax => "softmax",
        PostKind::Sigmoid => "sigmoid",
        PostKind::Argmax => "argmax",
        PostKind::MeanPool => "mean_pool",
        PostKind::ClsPool => "cls_pool",
        PostKind::MaxPool => "max_pool",
        PostKind::L2Normalize => "l2_normalize",
    }
}

/// `post` in words for messages: "softmax axis -1, argmax axis 0".
pub(crate) fn describe(post: &[PostOp]) -> String {
    post.iter()
        .map(|p| format!("{} axis {}", op_name(p.op), p.axis()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: PostKind, axis: i64) -> PostOp {
        PostOp {
            op,
            axis: Some(axis),
            mask: None,
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn softmax_matches_torch_on_the_per_row_axis() {
        let t = Tensor::randn([3, 4, 5], (Kind::Float, tch::Device::Cpu));
        let got = apply(&t, &[op(PostKind::Softmax, 0)]).unwrap();
        assert!(max_diff(&got, &t.softmax(1, Kind::Float)) < 1e-7);
        let got = apply(&t, &[op(PostKind::Softmax, -1)]).unwrap();
        assert!(max_diff(&got, &t.softmax(-1, Kind::Float)) < 1e-7);
    }

    #[test]
    fn sigmoid_matches_torch_and_computes_in_float32() {
        let t = Tensor::randn([6, 2], (Kind::Float, tch::Device::Cpu)).to_kind(Kind::Half);
        let got = apply(&t, &[op(PostKind::Sigmoid, -1)]).unwrap();
        assert_eq!(got.kind(), Kind::Float);
        assert!(max_diff(&got, &t.to_kind(Kind::Float).sigmoid()) < 1e-7);
    }

    #[test]
    fn argmax_takes_the_first_index_on_ties_and_drops_the_axis() {
        let t = Tensor::from_slice(&[1.0f32, 3.0, 3.0, 0.0, 2.0, 2.0]).reshape([2, 3]);
        let got = apply(&t, &[op(PostKind::Argmax, 0)]).unwrap();
        assert_eq!(got.size(), [2]);
        assert_eq!(Vec::<i64>::try_from(&got).unwrap(), [1, 1]);
        let t = Tensor::randn([2, 4, 3, 3], (Kind::Float, tch::Device::Cpu));
        let got = apply(&t, &[op(PostKind::Argmax, 0)]).unwrap();
        assert!(got.equal(&t.argmax(1, false)));
    }

    #[test]
    fn argmax_equals_torch_argmax_with_ties_and_nan_on_every_axis() {
        let t = Tensor::randint(3, [3, 4, 5, 6], (Kind::Float, tch::Device::Cpu));
        let _ = t.view([-1]).slice(0, 0, None, 37).fill_(f64::NAN);
        for axis in [0i64, 1, 2, -1, -3] {
            let got = apply(&t, &[op(PostKind::Argmax, axis)]).unwrap();
            let dim = if axis >= 0 { axis + 1 } else { axis };
            assert!(got.equal(&t.argmax(dim, false)), "axis {axis}");
        }
    }

    #[test]
    fn ops_run_in_order() {
        let t = Tensor::randn([2, 4, 3, 3], (Kind::Float, tch::Device::Cpu));
        let got = apply(&t, &[op(PostKind::Softmax, 0), op(PostKind::Argmax, 0)]).unwrap();
        assert!(got.equal(&t.softmax(1, Kind::Float).argmax(1, false)));
    }

    #[test]
    fn rejects_an_axis_out_of_the_per_row_range() {
        let t = Tensor::zeros([2, 4], (Kind::Float, tch::Device::Cpu));
        let e = apply(&t, &[op(PostKind::Softmax, 1)]).unwrap_err();
        assert!(
            e.contains("axis 1 is out of range: each row is a tensor [4] (1 dims)"),
            "{e}"
        );
        let e = apply(&t, &[op(PostKind::Argmax, -2)]).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let t = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let e = apply(&t, &[op(PostKind::Argmax, -1)]).unwrap_err();
        assert!(e.contains("each row is a single value"), "{e}");
    }
}
