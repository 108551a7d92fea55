//! `post`: softmax, sigmoid, argmax and l2_normalize on a batch tensor `[rows, ...]`, with the
//! declared axis counted per row (axis `a >= 0` is batch axis `a + 1`; negative axes are the
//! same); mean_pool, max_pool and cls_pool reduce the per-row token axis 0 under a mask.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::spec::general::{PostKind, PostOp};

/// Applies `post` in order to `t` (`[rows, ...]`). `masks`: this chunk's masks by mask input
/// name, each `[rows, T]` (1 real token, 0 padding), for the pooling ops.
///
/// softmax, sigmoid, l2_normalize and the pools compute in float32 (float64 when the model
/// returned float64: no precision is thrown away); argmax gives int64 indices, the first on
/// ties like `torch.argmax`, and removes its axis. The pools take rows `[T, ...]` to `[...]`
/// with sentence-transformers' formulas (`Pooling`, `Normalize`): mean `sum(x*m) /
/// clamp(sum(m), 1e-9)`, max over `x.masked_fill(m == 0, -inf)`, cls the row's token 0;
/// l2_normalize is `x / max(||x||_2, 1e-12)` (`F.normalize`).
///
/// Errors: an axis out of the per-row range, a per-row scalar given to an op that needs an
/// axis, a pool whose mask is missing or whose `[rows, T]` differs from the rows' (both
/// shapes named).
pub fn apply(
    t: &Tensor,
    post: &[PostOp],
    masks: &HashMap<String, Tensor>,
) -> Result<Tensor, String> {
    let mut t = t.shallow_clone();
    for (k, p) in post.iter().enumerate() {
        let rank = t.dim() as i64 - 1;
        let name = op_name(p.op);
        let a = p.axis();
        if !matches!(p.op, PostKind::Sigmoid) && !is_pool(p.op) {
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
            PostKind::MeanPool | PostKind::ClsPool | PostKind::MaxPool => {
                t = pool(&t, p, k, masks)?;
                continue;
            }
            PostKind::Softmax => t.f_softmax(axis, float_kind(&t)),
            PostKind::Sigmoid => t.f_to_kind(float_kind(&t)).and_then(|x| x.f_sigmoid()),
            // torch.max(dim).indices is torch.argmax (the first index on ties, NaN the
            // largest) and, over a non-last axis, several times faster on the CPU.
            PostKind::Argmax => t.f_max_dim(axis, false).map(|(_, i)| i),
            PostKind::L2Normalize => l2_normalize(&t, axis),
        };
        t = r.map_err(|e| format!("post[{k}] {name} on a tensor {:?}: {e}", t.size()))?;
    }
    Ok(t)
}

fn is_pool(op: PostKind) -> bool {
    matches!(
        op,
        PostKind::MeanPool | PostKind::ClsPool | PostKind::MaxPool
    )
}

/// `F.normalize(x, p=2, dim=axis, eps=1e-12)`: `x / clamp_min(||x||_2, eps)`.
fn l2_normalize(t: &Tensor, axis: i64) -> Result<Tensor, tch::TchError> {
    let x = t.f_to_kind(float_kind(t))?;
    let norm = x
        .f_norm_scalaropt_dim(2, [axis].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    x.f_div(&norm)
}

/// A pooling op on `t` (`[rows, T, ...]`) under its mask (`[rows, T]`): `[rows, ...]`.
fn pool(
    t: &Tensor,
    p: &PostOp,
    k: usize,
    masks: &HashMap<String, Tensor>,
) -> Result<Tensor, String> {
    let name = op_name(p.op);
    let size = t.size();
    if size.len() < 2 {
        return Err(format!(
            "post[{k}] {name} needs rows of tokens [T, H], but each row is a single value (a \
             tensor {size:?})"
        ));
    }
    let mask_name = p.mask.as_deref().unwrap_or_default();
    let m = masks.get(mask_name).ok_or_else(|| {
        format!(
            "post[{k}] {name}: no mask `{mask_name}` was built for this batch (the masks: {})",
            names(masks)
        )
    })?;
    let msize = m.size();
    if msize.len() != 2 || msize[..] != size[..2] {
        return Err(format!(
            "post[{k}] {name}: the rows are a tensor {size:?} (per row {:?}), but mask \
             `{mask_name}` is {msize:?}: its [rows, T] must equal the rows' first two \
             dimensions",
            &size[1..]
        ));
    }
    let fail = |e: tch::TchError| format!("post[{k}] {name} on a tensor {size:?}: {e}");
    let kind = float_kind(t);
    let x = t.f_to_kind(kind).map_err(fail)?;
    if p.op == PostKind::ClsPool {
        // Right padding: token 0 is each row's first real token ([CLS]).
        return x.f_select(1, 0).map_err(fail);
    }
    // [rows, T] -> [rows, T, 1, ...]: broadcast over the per-token dimensions.
    let mut view = msize.clone();
    view.resize(size.len(), 1);
    let m = m
        .f_to_kind(kind)
        .and_then(|m| m.f_reshape(&view))
        .map_err(fail)?;
    let r = match p.op {
        PostKind::MeanPool => (|| {
            let sum = x
                .f_mul(&m)?
                .f_sum_dim_intlist([1i64].as_slice(), false, kind)?;
            let count = m
                .f_expand(&size, false)?
                .f_sum_dim_intlist([1i64].as_slice(), false, kind)?
                .f_clamp_min(1e-9)?;
            sum.f_div(&count)
        })(),
        _ => m
            .f_eq(0.0)
            .and_then(|pad| x.f_masked_fill(&pad, f64::NEG_INFINITY))
            .and_then(|x| x.f_amax([1i64].as_slice(), false)),
    };
    r.map_err(fail)
}

fn names(masks: &HashMap<String, Tensor>) -> String {
    let mut n: Vec<_> = masks.keys().map(|k| format!("`{k}`")).collect();
    n.sort();
    if n.is_empty() {
        "none".into()
    } else {
        n.join(", ")
    }
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

/// `post` in words for messages: "softmax axis -1, argmax axis 0", "mean_pool over `mask`".
pub(crate) fn describe(post: &[PostOp]) -> String {
    post.iter()
        .map(|p| match &p.mask {
            Some(m) if is_pool(p.op) => format!("{} over `{m}`", op_name(p.op)),
            _ if is_pool(p.op) => op_name(p.op).to_string(),
            _ => format!("{} axis {}", op_name(p.op), p.axis()),
        })
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

    fn none() -> HashMap<String, Tensor> {
        HashMap::new()
    }

    fn pool_op(op: PostKind, mask: &str) -> PostOp {
        PostOp {
            op,
            axis: None,
            mask: Some(mask.into()),
        }
    }

    /// Rows `[3, 5, 4]` of lengths 5, 2 and 1 whose padding holds 1e6 (so that any padding
    /// read shows), and their int64 mask `[3, 5]` under the name `m`.
    fn ragged() -> (Tensor, HashMap<String, Tensor>, [i64; 3]) {
        let lens = [5i64, 2, 1];
        let mask = Tensor::zeros([3, 5], (Kind::Int64, tch::Device::Cpu));
        for (i, &l) in lens.iter().enumerate() {
            let _ = mask.get(i as i64).slice(0, 0, l, 1).fill_(1);
        }
        let x = Tensor::randn([3, 5, 4], (Kind::Float, tch::Device::Cpu));
        let x = x.masked_fill(&mask.eq(0).unsqueeze(-1), 1e6);
        (x, HashMap::from([("m".to_string(), mask)]), lens)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn softmax_matches_torch_on_the_per_row_axis() {
        let t = Tensor::randn([3, 4, 5], (Kind::Float, tch::Device::Cpu));
        let got = apply(&t, &[op(PostKind::Softmax, 0)], &none()).unwrap();
        assert!(max_diff(&got, &t.softmax(1, Kind::Float)) < 1e-7);
        let got = apply(&t, &[op(PostKind::Softmax, -1)], &none()).unwrap();
        assert!(max_diff(&got, &t.softmax(-1, Kind::Float)) < 1e-7);
    }

    #[test]
    fn sigmoid_matches_torch_and_computes_in_float32() {
        let t = Tensor::randn([6, 2], (Kind::Float, tch::Device::Cpu)).to_kind(Kind::Half);
        let got = apply(&t, &[op(PostKind::Sigmoid, -1)], &none()).unwrap();
        assert_eq!(got.kind(), Kind::Float);
        assert!(max_diff(&got, &t.to_kind(Kind::Float).sigmoid()) < 1e-7);
    }

    #[test]
    fn argmax_takes_the_first_index_on_ties_and_drops_the_axis() {
        let t = Tensor::from_slice(&[1.0f32, 3.0, 3.0, 0.0, 2.0, 2.0]).reshape([2, 3]);
        let got = apply(&t, &[op(PostKind::Argmax, 0)], &none()).unwrap();
        assert_eq!(got.size(), [2]);
        assert_eq!(Vec::<i64>::try_from(&got).unwrap(), [1, 1]);
        let t = Tensor::randn([2, 4, 3, 3], (Kind::Float, tch::Device::Cpu));
        let got = apply(&t, &[op(PostKind::Argmax, 0)], &none()).unwrap();
        assert!(got.equal(&t.argmax(1, false)));
    }

    #[test]
    fn argmax_equals_torch_argmax_with_ties_and_nan_on_every_axis() {
        let t = Tensor::randint(3, [3, 4, 5, 6], (Kind::Float, tch::Device::Cpu));
        let _ = t.view([-1]).slice(0, 0, None, 37).fill_(f64::NAN);
        for axis in [0i64, 1, 2, -1, -3] {
            let got = apply(&t, &[op(PostKind::Argmax, axis)], &none()).unwrap();
            let dim = if axis >= 0 { axis + 1 } else { axis };
            assert!(got.equal(&t.argmax(dim, false)), "axis {axis}");
        }
    }

    #[test]
    fn ops_run_in_order() {
        let t = Tensor::randn([2, 4, 3, 3], (Kind::Float, tch::Device::Cpu));
        let got = apply(
            &t,
            &[op(PostKind::Softmax, 0), op(PostKind::Argmax, 0)],
            &none(),
        )
        .unwrap();
        assert!(got.equal(&t.softmax(1, Kind::Float).argmax(1, false)));
    }

    #[test]
    fn rejects_an_axis_out_of_the_per_row_range() {
        let t = Tensor::zeros([2, 4], (Kind::Float, tch::Device::Cpu));
        let e = apply(&t, &[op(PostKind::Softmax, 1)], &none()).unwrap_err();
        assert!(
            e.contains("axis 1 is out of range: each row is a tensor [4] (1 dims)"),
            "{e}"
        );
        let e = apply(&t, &[op(PostKind::Argmax, -2)], &none()).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let t = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let e = apply(&t, &[op(PostKind::Argmax, -1)], &none()).unwrap_err();
        assert!(e.contains("each row is a single value"), "{e}");
    }

    #[test]
    fn mean_pool_averages_the_real_tokens_of_each_row() {
        let (x, masks, lens) = ragged();
        let got = apply(&x, &[pool_op(PostKind::MeanPool, "m")], &masks).unwrap();
        assert_eq!(got.size(), [3, 4]);
        // Row by row, on its real tokens only.
        for (i, &l) in lens.iter().enumerate() {
            let want = x
                .get(i as i64)
                .slice(0, 0, l, 1)
                .mean_dim(0, false, Kind::Float);
            assert!(max_diff(&got.get(i as i64), &want) < 1e-6, "row {i}");
        }
        // sentence-transformers' formula, as written in its Pooling module.
        let m = masks["m"]
            .unsqueeze(-1)
            .expand(x.size(), false)
            .to_kind(Kind::Float);
        let want = (&x * &m).sum_dim_intlist(1, false, Kind::Float)
            / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9);
        assert!(max_diff(&got, &want) < 1e-6);
    }

    #[test]
    fn max_pool_takes_the_largest_real_token_value() {
        let (x, masks, lens) = ragged();
        let got = apply(&x, &[pool_op(PostKind::MaxPool, "m")], &masks).unwrap();
        assert_eq!(got.size(), [3, 4]);
        for (i, &l) in lens.iter().enumerate() {
            let want = x.get(i as i64).slice(0, 0, l, 1).amax(0, false);
            assert!(got.get(i as i64).equal(&want), "row {i}");
        }
        let want = x
            .masked_fill(&masks["m"].eq(0).unsqueeze(-1), f64::NEG_INFINITY)
            .max_dim(1, false)
            .0;
        assert!(got.equal(&want));
    }

    #[test]
    fn cls_pool_takes_token_zero() {
        let (x, masks, _) = ragged();
        let got = apply(&x, &[pool_op(PostKind::ClsPool, "m")], &masks).unwrap();
        assert!(got.equal(&x.select(1, 0)));
    }

    #[test]
    fn l2_normalize_matches_f_normalize_on_any_axis_and_zero_rows() {
        let x = Tensor::randn([3, 2, 4], (Kind::Float, tch::Device::Cpu));
        let _ = x.get(1).fill_(0.0);
        for axis in [-1i64, 0, 1] {
            let dim = if axis >= 0 { axis + 1 } else { axis };
            let op = PostOp {
                op: PostKind::L2Normalize,
                axis: Some(axis),
                mask: None,
            };
            let got = apply(&x, &[op], &none()).unwrap();
            let norm = x
                .norm_scalaropt_dim(2, [dim].as_slice(), true)
                .clamp_min(1e-12);
            assert!(max_diff(&got, &(&x / norm)) < 1e-7, "axis {axis}");
            // A zero vector stays zero (eps), not NaN.
            assert_eq!(got.get(1).abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
        let got = apply(&x, &[op(PostKind::L2Normalize, -1)], &none()).unwrap();
        let norms = got.get(0).norm_scalaropt_dim(2, [-1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn mean_pool_then_l2_normalize_gives_unit_vectors() {
        let (x, masks, _) = ragged();
        let post = [
            pool_op(PostKind::MeanPool, "m"),
            op(PostKind::L2Normalize, -1),
        ];
        let got = apply(&x, &post, &masks).unwrap();
        let norms = got.norm_scalaropt_dim(2, [-1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn pools_compute_in_float32_or_the_models_float64() {
        let (x, masks, _) = ragged();
        for (kind, want) in [(Kind::Half, Kind::Float), (Kind::Double, Kind::Double)] {
            let x = x.clamp(-100.0, 100.0).to_kind(kind);
            for p in [PostKind::MeanPool, PostKind::MaxPool, PostKind::ClsPool] {
                let got = apply(&x, &[pool_op(p, "m")], &masks).unwrap();
                assert_eq!(got.kind(), want, "{p:?} on {kind:?}");
            }
            let got = apply(&x, &[op(PostKind::L2Normalize, -1)], &none()).unwrap();
            assert_eq!(got.kind(), want);
        }
    }

    #[test]
    fn pools_refuse_a_missing_mask_or_one_of_other_tokens() {
        let (x, masks, _) = ragged();
        let e = apply(&x, &[pool_op(PostKind::MeanPool, "other")], &masks).unwrap_err();
        assert!(
            e.contains(
                "post[0] mean_pool: no mask `other` was built for this batch (the masks: `m`)"
            ),
            "{e}"
        );
        let short = x.slice(1, 0, 4, 1);
        let e = apply(&short, &[pool_op(PostKind::MaxPool, "m")], &masks).unwrap_err();
        assert!(
            e.contains("the rows are a tensor [3, 4, 4] (per row [4, 4]), but mask `m` is [3, 5]"),
            "{e}"
        );
        let flat = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
        let e = apply(&flat, &[pool_op(PostKind::ClsPool, "m")], &masks).unwrap_err();
        assert!(e.contains("needs rows of tokens [T, H]"), "{e}");
    }
}
