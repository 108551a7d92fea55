//! Good rows of one input → the argument `forward` takes.

use tch::Tensor;

use super::RowTensor;
use crate::spec::general::{DType, InputDecl};
use crate::value::ModelInput;

/// Stacks `rows` (all read for `decl`) into `[n, ...shape]`; with `ragged: "pad"` pads each
/// variable dimension to the longest row with `pad_value`; with `ragged: "list"` gives
/// `List[Tensor]`. Also returns, for a padded input, the mask (`[n, ...padded shape]`, 1 real,
/// 0 pad) in `mask_dtype` when the spec declares a mask of it.
pub fn assemble(
    decl: &InputDecl,
    rows: &[&RowTensor],
    mask_dtype: Option<DType>,
) -> Result<(ModelInput, Option<Tensor>), String> {
    let _ = (decl, rows, mask_dtype);
    Err("assembly: not built yet".into())
}
