//! Text inputs: a string (or UTF-8 binary) column tokenized into token ids by the Hugging Face
//! `tokenizer.json` the spec names.
//!
//! A row is `[len]` ids (`[CLS] ... [SEP]` for a BERT tokenizer), in the input's dtype; the
//! plan pads rows to the batch's longest and makes the mask ([`super::assemble`]), as for any
//! `ragged: "pad"` input. The file's own padding and truncation are overridden: no padding,
//! truncation at the spec's `max_length` (longest-first, on the right), which is where
//! sentence-transformers cuts (`max_seq_length`, not the 128 a MiniLM tokenizer.json carries).
//! Rows are encoded one by one on the caller's thread budget ([`crate::sys::decode_pool`]),
//! never with `encode_batch` (rayon's global pool: every core, and one bad row fails all).
//! A row over `max_text_bytes` is an error before it is tokenized; a long row is tokenized
//! by heads, exactly ([`TextTokenizer::encode`]), so its cost follows the part `max_length`
//! keeps, not its length.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::{InputReader, RowData, RowTensor};
use crate::error::{Error, Result};
use crate::input::image::preprocess::RowTimes;
use crate::spec::general::{DType, InputDecl};

/// A loaded tokenizer with the spec's overrides; one per text input of a loaded model, shared
/// by every task thread (`encode` takes `&self`; the tokenizer is `Send + Sync`).
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Without special tokens, tokenizers 0.23.2's post-processor drops the overflowing
    /// parts, so a row of exactly `max_length` ids is re-encoded untruncated to tell a cut.
    untruncated: Option<Tokenizer>,
    /// `inner` without truncation or post-processor: a long text's head goes through it, so
    /// that its tokens keep their word ids and byte offsets (see [`TextTokenizer::encode`]).
    raw: Tokenizer,
    /// The ids a row keeps before the special tokens are added.
    budget: usize,
    /// Bytes a token of a head must end before the head's end to count as the whole text's
    /// (added tokens, and the few characters a normalizer looks at, past a word's end).
    margin: usize,
    file: PathBuf,
    /// The file as it was read (fstat of the descriptor): the registry reloads the model
    /// when the file on disk no longer matches.
    meta: std::fs::Metadata,
    add_special: bool,
    max_length: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("file", &self.file)
            .field("max_length", &self.max_length)
            .field("add_special", &self.add_special)
            .finish()
    }
}

impl TextTokenizer {
    /// Reads `spec_dir/decl.tokenizer` once and checks it: the `tokenizer_sha256` pin, that
    /// it parses as a Hugging Face `tokenizer.json`, that its vocabulary (added tokens
    /// included) fits `vocab_size`, that `max_length` leaves room for the special tokens, and
    /// that a single sequence gets type id 0 (what the generated `type_ids` input gives).
    /// `at` names the input in messages (`inputs[0]`).
    ///
    /// Errors: [`Error::Spec`] with `path` the tokenizer file (the JVM's ModelSpecException,
    /// Python's ModelSpecError).
    pub fn load(spec_dir: &Path, at: &str, decl: &InputDecl) -> Result<TextTokenizer> {
        static NO_RAYON: Once = Once::new();
        // tokenizers would otherwise parallelize inside one encode on rayon's global pool (its
        // default when TOKENIZERS_PARALLELISM is unset); rows are already spread by us.
        NO_RAYON.call_once(|| tokenizers::utils::parallelism::set_parallelism(false));
        let name = decl.tokenizer.as_deref().unwrap_or_default();
        let file = spec_dir.join(name);
        let fail = |reason: String| Error::Spec {
            path: file.clone(),
            reason: format!("{at} (`{}`): {reason}", decl.name),
        };
        let read = |f: &Path| -> std::io::Result<(Vec<u8>, std::fs::Metadata)> {
            let mut fd = std::fs::File::open(f)?;
            let meta = fd.metadata()?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut fd, &mut bytes)?;
            Ok((bytes, meta))
        };
        let (bytes, meta) = read(&file).map_err(|e| fail(format!("cannot read: {e}")))?;
        if let Some(expected) = &decl.tokenizer_sha256 {
            let actual: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(fail(format!(
                    "sha256 is {actual}, but tokenizer_sha256 pins {expected}"
                )));
            }
        }
        let mut inner = Tokenizer::from_bytes(&bytes)
            .map_err(|e| fail(format!("not a Hugging Face tokenizer.json: {e}")))?;
        let vocab = inner.get_vocab_size(true);
        if let Some(size) = decl.vocab_size
            && vocab > size
        {
            return Err(fail(format!(
                "the tokenizer has {vocab} tokens (added tokens included), more than the \
                 model's vocab_size {size}: its ids would index past the embedding table"
            )));
        }
        let add_special = decl.add_special_tokens.unwrap_or(true);
        let max_length = decl.max_length.unwrap_or(0);
        let special = match inner.get_post_processor() {
            Some(p) if add_special => tokenizers::PostProcessor::added_tokens(p, false),
            _ => 0,
        };
        // tokenizers subtracts the special tokens from max_length unchecked (usize).
        if max_length < special.max(1) {
            return Err(fail(format!(
                "max_length {max_length} leaves no room: a row has {special} special tokens"
            )));
        }
        inner.with_padding(None);
        let untruncated = (!add_special).then(|| {
            let mut t = inner.clone();
            t.with_truncation(None).map(|_| ()).ok();
            t
        });
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| fail(format!("truncation at max_length {max_length}: {e}")))?;
        let probe = inner
            .encode_fast("a", add_special)
            .map_err(|e| fail(format!("cannot encode \"a\": {e}")))?;
        if probe.get_type_ids().iter().any(|&t| t != 0) {
            return Err(fail(
                "its post-processor gives a single sequence type ids other than 0, but the \
                 generated type_ids input is all zeros"
                    .into(),
            ));
        }
        let mut raw = inner.clone();
        raw.with_truncation(None)
            .map_err(|e| fail(format!("without truncation: {e}")))?;
        raw.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        let longest_added = inner
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.len())
            .max()
            .unwrap_or(0);
        Ok(TextTokenizer {
            inner,
            untruncated,
            raw,
            budget: if add_special {
                max_length - special
            } else {
                max_length
            },
            margin: HEAD_MARGIN + longest_added,
            file,
            meta,
            add_special,
            max_length,
        })
    }

    /// The tokenizer file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The tokenizer file's metadata when it was read.
    pub fn metadata(&self) -> &std::fs::Metadata {
        &self.meta
    }

    /// The most ids a row has (the spec's `max_length`).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `text`'s token ids (special tokens added unless the spec says not) and whether it was
    /// truncated at `max_length`: exactly what tokenizing the whole text and truncating gives
    /// (the `tokenizers` package's `encode` with truncation), in time linear in the part kept.
    /// Errors: the tokenizer's own, as a row's reason.
    ///
    /// A long text is tokenized by heads (its first bytes, doubled until enough): every step of
    /// a tokenizer (added tokens, normalizer, pre-tokenizer) is local to a few characters, and
    /// the model (WordPiece, BPE, Unigram) tokenizes each pre-token (word) on its own, so a
    /// head's tokens equal the whole text's up to its last word. A head's tokens count when
    /// they come before its last word and end [`HEAD_MARGIN`] bytes (plus the longest added
    /// token) before its end; once more than `max_length` (less the special tokens) count,
    /// they are the result. A text whose words never end (no pre-tokenizer, one huge word) is
    /// tokenized whole: `max_text_bytes` bounds that.
    pub fn encode(&self, text: &str) -> std::result::Result<(Vec<i64>, bool), String> {
        if let Some(done) = self.encode_head(text)? {
            return Ok(done);
        }
        let enc = encode(&self.inner, text, self.add_special)?;
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        let cut = match &self.untruncated {
            Some(full) if ids.len() == self.max_length => {
                encode(full, text, self.add_special)?.len() > self.max_length
            }
            _ => !enc.get_overflowing().is_empty(),
        };
        Ok((ids, cut))
    }

    /// The whole text's ids from a head of `text`, or `None` when no head shorter than the
    /// text holds enough whole words (then the caller tokenizes all of it).
    fn encode_head(&self, text: &str) -> std::result::Result<Option<(Vec<i64>, bool)>, String> {
        // ~8 bytes a token: English averages 4-5 with the space, CJK 3.
        let mut len = self
            .budget
            .saturating_add(1)
            .saturating_mul(8)
            .saturating_add(self.margin);
        // A head past half the text costs what the whole text does: tokenize that instead.
        while len.saturating_mul(2) <= text.len() {
            let mut end = len;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let mut enc = encode_with_words(&self.raw, &text[..end])?;
            if stable_tokens(&enc, end, self.margin) > self.budget {
                // One token more than kept: the truncation below then reports the cut.
                enc.truncate(self.budget + 1, 0, TruncationDirection::Right);
                enc.take_overflowing();
                let done = self
                    .inner
                    .post_process(enc, None, self.add_special)
                    .map_err(|e| format!("the tokenizer failed: {e}"))?;
                let ids = done.get_ids().iter().map(|&i| i64::from(i)).collect();
                return Ok(Some((ids, true)));
            }
            len = len.saturating_mul(2);
        }
        Ok(None)
    }
}

/// Bytes past a head's last counted token, besides the longest added token: what a normalizer
/// may look at past a character (Unicode composition, a SentencePiece charsmap entry).
pub const HEAD_MARGIN: usize = 64;

/// How many of a head's first tokens are the whole text's: those of a word before the head's
/// last word that end `margin` bytes before the head's `end`.
fn stable_tokens(enc: &tokenizers::Encoding, end: usize, margin: usize) -> usize {
    let words = enc.get_word_ids();
    let Some(last) = words.iter().flatten().max().copied() else {
        return 0;
    };
    words
        .iter()
        .zip(enc.get_offsets())
        .take_while(|(w, o)| w.is_some_and(|w| w < last) && o.1.saturating_add(margin) <= end)
        .count()
}

/// `text` through `tok` with word ids and byte offsets (no special tokens); errors and panics
/// as in [`encode`].
fn encode_with_words(
    tok: &Tokenizer,
    text: &str,
) -> std::result::Result<tokenizers::Encoding, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tok.encode(text, false)))
        .map_err(|_| "the tokenizer failed on this text (it panicked)".to_string())?
        .map_err(|e| format!("the tokenizer failed: {e}"))
}

/// One text through `tok`; the tokenizer's error, or a panic inside it, is the row's reason.
fn encode(
    tok: &Tokenizer,
    text: &str,
    add_special: bool,
) -> std::result::Result<tokenizers::Encoding, String> {
    // A panic inside the tokenizer on some input fails that row, not the batch.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tok.encode_fast(text, add_special)
    }))
    .map_err(|_| "the tokenizer failed on this text (it panicked)".to_string())?
    .map_err(|e| format!("the tokenizer failed: {e}"))
}

/// See [`super::reader`]: `tok` is the model's tokenizer for `decl`.
/// `max_bytes` is the most UTF-8 bytes a row may hold (`max_text_bytes`).
pub fn reader<'a>(
    decl: &'a InputDecl,
    columns: Vec<(&'a str, &'a ArrayRef)>,
    tok: &'a TextTokenizer,
    max_bytes: u64,
) -> std::result::Result<Box<dyn InputReader + 'a>, String> {
    let [(_, col)] = columns[..] else {
        return Err(format!(
            "a text input reads one column, not {}",
            columns.len()
        ));
    };
    if !is_text_type(col.data_type()) {
        return Err(format!(
            "a text input reads a string or binary (UTF-8) column, not {}",
            col.data_type()
        ));
    }
    if !matches!(decl.dtype, DType::Int64 | DType::Int32) {
        return Err(format!(
            "a text input's dtype is int64 or int32, not {}",
            decl.dtype
        ));
    }
    Ok(Box::new(TextReader {
        col: col.as_ref(),
        tok,
        dtype: decl.dtype,
        max_bytes,
        truncated: AtomicU64::new(0),
    }))
}

fn is_text_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
    )
}

struct TextReader<'a> {
    col: &'a dyn Array,
    tok: &'a TextTokenizer,
    dtype: DType,
    /// `max_text_bytes`: a longer row is an error, never tokenized.
    max_bytes: u64,
    /// Rows cut at `max_length` so far (read by the plan for `torchspark.truncated_rows`).
    truncated: AtomicU64,
}

impl TextReader<'_> {
    fn row(&self, i: usize) -> std::result::Result<RowTensor, String> {
        if i >= self.col.len() {
            return Err(format!("row {i} is beyond the column"));
        }
        if self.col.is_null(i) {
            return Err("null".into());
        }
        let started = Instant::now();
        let len = text_len(self.col, i);
        if len as u64 > self.max_bytes {
            return Err(format!(
                "text is {} bytes, over the limit of {} bytes per row (max_text_bytes)",
                crate::limits::grouped(len as u64),
                crate::limits::grouped(self.max_bytes)
            ));
        }
        let text = text_at(self.col, i)?;
        let (ids, cut) = self.tok.encode(text)?;
        if cut {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
        let len = ids.len() as i64;
        let data = match self.dtype {
            DType::Int32 => RowData::I32(
                ids.iter()
                    .map(|&v| i32::try_from(v))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| "a token id does not fit int32".to_string())?,
            ),
            _ => RowData::I64(ids),
        };
        Ok(RowTensor {
            data,
            shape: vec![len],
            // Tokenizing is this input's decoding.
            times: RowTimes {
                decode: started.elapsed(),
                resize: Default::default(),
            },
        })
    }
}

/// Row `i`'s bytes (checked against `max_text_bytes` before it is even validated as UTF-8).
fn text_len(col: &dyn Array, i: usize) -> usize {
    match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(i).len(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(i).len(),
        DataType::Utf8View => col.as_string_view().value(i).len(),
        DataType::Binary => col.as_binary::<i32>().value(i).len(),
        DataType::LargeBinary => col.as_binary::<i64>().value(i).len(),
        _ => 0,
    }
}

/// Row `i` (not null) of a column [`is_text_type`] accepts, as `&str`.
fn text_at(col: &dyn Array, i: usize) -> std::result::Result<&str, String> {
    let bytes: &[u8] = match col.data_type() {
        DataType::Utf8 => return Ok(col.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => return Ok(col.as_string::<i64>().value(i)),
        DataType::Utf8View => return Ok(col.as_string_view().value(i)),
        DataType::Binary => col.as_binary::<i32>().value(i),
        DataType::LargeBinary => col.as_binary::<i64>().value(i),
        other => return Err(format!("a {other} column is not text")),
    };
    std::str::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8: invalid byte at offset {}", e.valid_up_to()))
}

impl InputReader for TextReader<'_> {
    fn read(
        &self,
        rows: Range<usize>,
        threads: usize,
    ) -> Vec<std::result::Result<RowTensor, String>> {
        match crate::sys::decode_pool(threads) {
            None => rows.map(|i| self.row(i)).collect(),
            Some(pool) => pool.install(|| rows.into_par_iter().map(|i| self.row(i)).collect()),
        }
    }

    fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }
}

/// Each row's length for sorting rows longest-first (sentence-transformers sorts by
/// characters): chars of a string, bytes of a binary value, 0 for a null. `None` for a column
/// that is not text.
pub fn sort_keys(array: &ArrayRef) -> Option<Vec<usize>> {
    let col = array.as_ref();
    let len = |i: usize, f: &dyn Fn(usize) -> usize| if col.is_null(i) { 0 } else { f(i) };
    let n = col.len();
    let keys = match col.data_type() {
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            (0..n)
                .map(|i| len(i, &|i| a.value(i).chars().count()))
                .collect()
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            (0..n)
                .map(|i| len(i, &|i| a.value(i).chars().count()))
                .collect()
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            (0..n)
                .map(|i| len(i, &|i| a.value(i).chars().count()))
                .collect()
        }
        DataType::Binary => {
            let a = col.as_binary::<i32>();
            (0..n).map(|i| len(i, &|i| a.value(i).len())).collect()
        }
        DataType::LargeBinary => {
            let a = col.as_binary::<i64>();
            (0..n).map(|i| len(i, &|i| a.value(i).len())).collect()
        }
        _ => return None,
    };
    Some(keys)
}
