//! The limits that bound the memory one row or one chunk of rows can take, whatever the data
//! says (docs/limits.md is the user's reference).
//!
//! Every size a row chooses (a list's length, a sparse vector's `size`, an image's width and
//! height, a text's bytes) is checked against a limit before anything of that size is
//! allocated; a row past a limit gets a row error naming the row, input, column, the size found
//! and the limit, and the other rows are still scored. Chunks (one forward pass's rows) are cut
//! by bytes as well as by rows, so every job the engine queues fits its byte bound.
//!
//! | limit | default | set by (the smaller applies) |
//! |---|---|---|
//! | per-row elements | [`DEFAULT_MAX_ROW_ELEMENTS`] | spec `inputs[i].max_row_elements`, call `max_row_elements` |
//! | per-chunk bytes | the engine's `queue_bytes` (256 MiB) | call `max_batch_bytes` |
//! | text bytes | [`DEFAULT_MAX_TEXT_BYTES`] | spec `inputs[i].max_text_bytes`, call `max_text_bytes` |
//! | padding waste | [`MAX_PAD_RATIO`] (above [`PAD_WASTE_FLOOR_BYTES`]) | fixed |
//! | top-k | the class count | fixed (a larger `top_k` gives every class) |
//! | image pixels | `preprocess.max_pixels` (178,956,970) | spec, call `max_pixels` |
//! | one image decode's memory | [`decode_budget`]: 16 bytes x `max_pixels` (>= 64 MiB) | follows `max_pixels` |

/// Values one row of one input may hold (after a sparse vector is densified, an image decoded
/// at its own size): 2^26, so that one float32 row (256 MiB) fits the default chunk budget.
pub const DEFAULT_MAX_ROW_ELEMENTS: u64 = 1 << 26;

/// Bytes of UTF-8 one text row may hold (1 MiB, about 150,000 English words). Only the part
/// that `max_length` keeps is tokenized when the tokenizer allows it (see
/// [`crate::input::text`]); this bounds the cases where the whole text must be (one long
/// word, a tokenizer with no pre-tokenizer).
pub const DEFAULT_MAX_TEXT_BYTES: u64 = 1 << 20;

/// Default bytes of one forward pass's inputs (padding and masks included): the engine's
/// default `queue_bytes` bound, so that a job always fits an empty queue's bound.
pub const DEFAULT_BATCH_BYTES: usize = 256 << 20;

/// A padded chunk is cut before its padded values pass this many times its real values...
pub const MAX_PAD_RATIO: usize = 4;

/// ... unless the padded chunk is smaller than this (small chunks pad cheaply).
pub const PAD_WASTE_FLOOR_BYTES: usize = 1 << 20;

/// Bytes one image decode may hold, per pixel of `max_pixels`: the largest decoded buffer
/// (RGBA f32). Every decoder's measured peak (output, intermediates and the band conversion,
/// docs/limits.md) is below it, so a header within `max_pixels` decodes within
/// [`decode_budget`]; the fuzz pass (tests/fuzz.rs) refuses any allocation past it.
pub const DECODE_BYTES_PER_PIXEL: u64 = 16;

/// The smallest decode budget: metadata chunks (ICC, EXIF, text) are allocated against the
/// image crate's cap before the header's size is known, and a low `max_pixels` must not
/// refuse them.
pub const DECODE_FLOOR_BYTES: u64 = 64 << 20;

/// The most one image decode may hold for a pixel limit of `max_pixels`:
/// [`DECODE_BYTES_PER_PIXEL`] x `max_pixels`, at least [`DECODE_FLOOR_BYTES`].
pub fn decode_budget(max_pixels: u64) -> u64 {
    max_pixels
        .saturating_mul(DECODE_BYTES_PER_PIXEL)
        .max(DECODE_FLOOR_BYTES)
}

/// The limit in force: `spec` (or `default` when the spec says nothing), lowered by `call`
/// (0: no lowering).
pub fn effective(spec: Option<u64>, default: u64, call: u64) -> u64 {
    let base = spec.unwrap_or(default);
    if call == 0 { base } else { base.min(call) }
}

/// The per-row limits of one call, as the caller asked (0: the spec's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallLimits {
    /// Width x height of an image (see `preprocess.max_pixels`).
    pub max_pixels: u64,
    /// Values of one row of one input.
    pub max_row_elements: u64,
    /// UTF-8 bytes of one text row.
    pub max_text_bytes: u64,
}

/// "12,345,678": big sizes in messages.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The row error of a row with `found` values, over `limit`.
pub fn too_many_elements(found: u64, limit: u64, what: &str) -> String {
    format!(
        "{what} {} values, over the limit of {} values per row (max_row_elements)",
        grouped(found),
        grouped(limit)
    )
}

/// `n` values of `elem` bytes, or `None` when the product overflows.
pub fn bytes_of(n: u64, elem: usize) -> Option<u64> {
    n.checked_mul(elem as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_only_lowers_the_spec_or_default() {
        assert_eq!(effective(None, 100, 0), 100);
        assert_eq!(effective(None, 100, 10), 10);
        assert_eq!(effective(None, 100, 1000), 100);
        assert_eq!(effective(Some(1000), 100, 0), 1000);
        assert_eq!(effective(Some(1000), 100, 500), 500);
    }

    #[test]
    fn sizes_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(134_217_728), "134,217,728");
    }
}
