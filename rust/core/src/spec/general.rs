//! Version 2 of the spec: any tensors in, any tensors out.
//!
//! ```json
//! {"spec_version": 2,
//!  "inputs": [
//!   {"name": "image", "kind": "image", "column": "content", "shape": [3, 32, 32],
//!    "preprocess": {"scale": 0.00392156862745098, "mean": [0.5], "std": [0.5]}},
//!   {"name": "meta", "column": ["age", "bmi", "bp", "s1"], "dtype": "float32", "shape": [4]},
//!   {"name": "ids", "dtype": "int64", "shape": [-1], "ragged": "pad", "pad_value": 0},
//!   {"name": "ids_mask", "kind": "mask", "of": "ids", "dtype": "int64"}],
//!  "outputs": [
//!   {"name": "probability", "from": 0, "column": "vector", "post": [{"op": "softmax"}]},
//!   {"name": "embedding", "from": 1, "column": "array", "shape": [8]},
//!   {"name": "classes", "from": "out", "column": "array", "shape": [-1, -1],
//!    "post": [{"op": "argmax", "axis": 0}]},
//!   {"name": "detections", "from": 1, "column": "structs", "fields": [
//!     {"name": "box", "from": "boxes", "shape": [4]},
//!     {"name": "label", "from": "labels", "dtype": "int32"},
//!     {"name": "score", "from": "scores"}]}]}
//! ```
//!
//! A text model (sentence-transformers' all-MiniLM-L6-v2, as `export_text_model` writes it):
//!
//! ```json
//! {"spec_version": 2,
//!  "inputs": [
//!   {"name": "input_ids", "kind": "text", "column": "text", "dtype": "int64",
//!    "tokenizer": "minilm.tokenizer.json", "max_length": 256, "vocab_size": 30522},
//!   {"name": "attention_mask", "kind": "mask", "of": "input_ids", "dtype": "int64"},
//!   {"name": "token_type_ids", "kind": "type_ids", "of": "input_ids", "dtype": "int64"}],
//!  "outputs": [
//!   {"name": "embedding", "column": "vector", "shape": [384],
//!    "post": [{"op": "mean_pool", "mask": "attention_mask"}, {"op": "l2_normalize"}]}]}
//! ```
//!
//! `forward` takes the inputs in their declared order. Shapes are per row (the batch dimension
//! is not written); `-1` is a variable dimension, which needs `ragged`. docs/models.md is the
//! reference; every rule below is enforced by [`GeneralSpec::validate`], whose errors name the
//! field (`inputs[1].shape`, `outputs.detections.fields[0].from`).

use std::collections::HashSet;

use serde::Deserialize;

use super::image::{
    ChannelOrder, CpuSpec, FeatureSource, FilePrecision, InputSpec, ModelSpec, OutputKind,
    Preprocess,
};

/// The one input of a lowered version-1 spec.
pub const V1_INPUT: &str = "image";
/// A lowered version-1 spec's raw class vector (its `predict` preset).
pub const V1_OUTPUT: &str = "output";
/// A lowered version-1 spec's featurize output.
pub const V1_FEATURES: &str = "features";

/// The whole version-2 spec file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneralSpec {
    /// Always 2 here.
    pub spec_version: u32,
    /// One entry per `forward` argument, in order.
    pub inputs: Vec<InputDecl>,
    /// One entry per output column, in column order.
    pub outputs: Vec<OutputDecl>,
    /// A TorchScript method to call instead of `forward` (a package: the model of that name).
    #[serde(default)]
    pub method: Option<String>,
    /// As in version 1: a pinned sha256 (hex) of the model file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// As in version 1: what the model file computes in (absent: fp32).
    #[serde(default)]
    pub precision: Option<FilePrecision>,
    /// As in version 1: the CPU a package's code needs.
    #[serde(default)]
    pub cpu: Option<CpuSpec>,
    /// Set by [`GeneralSpec::from_image`] only (never in JSON): this spec is a version-1 spec
    /// lowered, so its presets are version 1's and its one image input reads the batch's only
    /// column when the caller names none.
    #[serde(skip)]
    pub lowered_from_v1: bool,
}

/// `inputs[i]`: one argument of `forward`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDecl {
    /// Unique among inputs; also the default column.
    pub name: String,
    #[serde(default)]
    pub kind: InputKind,
    /// The DataFrame column, or several numeric scalar columns gathered (in this order) into
    /// one 1-D input. Default: `name`. Not allowed on a `mask`.
    #[serde(default)]
    pub column: Option<Columns>,
    /// The tensor's dtype as `forward` receives it (default float32; images: float32 only).
    #[serde(default)]
    pub dtype: DType,
    /// Per-row shape; `[]` a scalar per row; `-1` a variable dimension. An image's is
    /// `[C, H, W]` (C 1, 3 or 4); a mask's is its padded input's and is not written.
    #[serde(default)]
    pub shape: Vec<i64>,
    /// How rows of different lengths form a batch; required iff `shape` has a `-1`.
    #[serde(default)]
    pub ragged: Option<Ragged>,
    /// The value padding fills (`ragged: "pad"`); default 0; must fit `dtype`.
    #[serde(default)]
    pub pad_value: Option<f64>,
    /// A `mask` input: the name of the padded input it marks (1 real, 0 pad).
    #[serde(default)]
    pub of: Option<String>,
    /// What a NaN in a row does: `pass` (default, the model gets it) or `error` (a row error).
    #[serde(default)]
    pub nan: NanPolicy,
    /// An image's channel order, as in version 1's `input.channel_order`.
    #[serde(default)]
    pub channel_order: Option<ChannelOrder>,
    /// An image's preprocessing, as in version 1 (resize, crop, scale, mean, std, limits).
    #[serde(default)]
    pub preprocess: Option<Preprocess>,
    /// A `text` input: the Hugging Face `tokenizer.json` file, a name in the spec's folder (no
    /// `/`, no `..`: it ships with the model). Its own padding and truncation are overridden.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// A `text` input (required there): the most tokens per row, special tokens included, as
    /// Hugging Face's `max_length`; longer texts are truncated at the right and counted.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// A `text` input: the model's vocabulary size; a tokenizer whose vocabulary (added tokens
    /// included) is larger is refused at load.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// A `text` input: a pinned sha256 (hex) of the tokenizer file.
    #[serde(default)]
    pub tokenizer_sha256: Option<String>,
    /// A `text` input: whether to add the tokenizer's special tokens (`[CLS]`, `[SEP]`;
    /// default true, as Hugging Face's `add_special_tokens`).
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    /// A `tensor` or `image` input: the most values one row may hold (a list's length, a
    /// sparse vector's size, an image at its own size's C x H x W); more is a row error.
    /// Default [`crate::limits::DEFAULT_MAX_ROW_ELEMENTS`]; a call's `max_row_elements` lowers it.
    #[serde(default)]
    pub max_row_elements: Option<u64>,
    /// A `text` input: the most UTF-8 bytes one row may hold; more is a row error. Default
    /// [`crate::limits::DEFAULT_MAX_TEXT_BYTES`]; a call's `max_text_bytes` lowers it.
    #[serde(default)]
    pub max_text_bytes: Option<u64>,
}

/// `inputs[i].kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// Numbers from the column(s).
    #[default]
    Tensor,
    /// Encoded bytes or Spark's image struct, through `preprocess` (version 1's rules).
    Image,
    /// Generated: 1 where the input named in `of` has a real value, 0 where it was padded.
    Mask,
    /// A string (or UTF-8 binary) column tokenized by `tokenizer` into token ids: a row is
    /// `[len]` ids, padded to the batch's longest row (Hugging Face's `input_ids`).
    Text,
    /// Generated: zeros of the shape of the text input named in `of` (Hugging Face's
    /// `token_type_ids` of a single sequence).
    #[serde(rename = "type_ids")]
    TypeIds,
}

impl InputKind {
    /// Generated by torchspark (no column is read): `mask`, `type_ids`.
    pub fn is_generated(self) -> bool {
        matches!(self, InputKind::Mask | InputKind::TypeIds)
    }
}

/// `inputs[i].column`: one column, or scalar columns gathered into a vector.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Columns {
    One(String),
    Gather(Vec<String>),
}

impl Columns {
    pub fn names(&self) -> Vec<&str> {
        match self {
            Columns::One(c) => vec![c.as_str()],
            Columns::Gather(cs) => cs.iter().map(String::as_str).collect(),
        }
    }
}

/// Tensor element types, in torch's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    Float32,
    Float64,
    Int64,
    Int32,
    Uint8,
    Bool,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
            DType::Uint8 => "uint8",
            DType::Bool => "bool",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::Float32 | DType::Float64)
    }

    /// Whether `v` is a value of this type (pad values).
    pub fn holds(self, v: f64) -> bool {
        let int = v.fract() == 0.0;
        match self {
            DType::Float32 => !v.is_finite() || v.abs() <= f64::from(f32::MAX),
            DType::Float64 => true,
            DType::Int64 => int && v.abs() <= 9_007_199_254_740_992.0,
            DType::Int32 => int && v >= f64::from(i32::MIN) && v <= f64::from(i32::MAX),
            DType::Uint8 => int && (0.0..=255.0).contains(&v),
            DType::Bool => v == 0.0 || v == 1.0,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `inputs[i].ragged`: rows whose variable dimensions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ragged {
    /// Padded with `pad_value` to the batch's longest row in each variable dimension.
    Pad,
    /// `forward` takes a `List[Tensor]`, one per row (torchvision's detection models).
    List,
    /// One row per forward pass.
    Single,
}

/// `inputs[i].nan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    #[default]
    Pass,
    Error,
}

/// `outputs[j]`: one output column.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDecl {
    /// The column's name (unique, not `error`).
    pub name: String,
    /// Where in what the model returns: absent (the whole result, a tensor or a per-row list),
    /// an index into a tuple/list, a key of a dict, or a path of them (`[0, "out"]`).
    #[serde(default)]
    pub from: Option<FromPath>,
    /// The column's kind (default `array`).
    #[serde(default)]
    pub column: ColumnKind,
    /// The column's element type (defaults: `scalar` float64, `vector` float64, `array`
    /// float32 or int32 after `argmax`; `png` is binary).
    #[serde(default)]
    pub dtype: Option<DType>,
    /// The per-row shape after `post`; its length is the `array` column's nesting depth
    /// (absent: a flat 1-D array). Fixed sizes are checked at the first batch.
    #[serde(default)]
    pub shape: Option<Vec<i64>>,
    /// Applied in order to the per-row tensor before it is written.
    #[serde(default)]
    pub post: Vec<PostOp>,
    /// A `structs` column's fields: keys of each row's dict.
    #[serde(default)]
    pub fields: Vec<FieldDecl>,
    /// The TorchScript method (a package: the model of that name) this output comes from;
    /// absent: the spec's `method`, else `forward`. Outputs selected together in one call
    /// must come from one method (one forward pass).
    #[serde(default)]
    pub method: Option<String>,
    /// A `label` or `top_k` column: the class names, index-aligned with the per-row class
    /// vector (absent: null labels). A row whose vector has another length is an error.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Set by the version-1 lowering only (never in JSON): element N of what the method
    /// returns, a lone tensor counting as element 0 (version 1's `output_index`), where
    /// `from` would refuse a lone tensor.
    #[serde(skip)]
    pub output_index: Option<usize>,
}

/// A step of `from`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Step {
    Index(usize),
    Key(String),
}

/// `outputs[j].from`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FromPath {
    One(Step),
    Path(Vec<Step>),
}

impl FromPath {
    pub fn steps(&self) -> Vec<Step> {
        match self {
            FromPath::One(s) => vec![s.clone()],
            FromPath::Path(p) => p.clone(),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Index(i) => write!(f, "[{i}]"),
            Step::Key(k) => write!(f, "[{k:?}]"),
        }
    }
}

/// `outputs[j].column`: how a row's tensor becomes a value. See docs/models.md for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// One number per row.
    Scalar,
    /// A 1-D float64 array with field metadata `torchspark.column = vector` (an ML `Vector` in
    /// the JVM).
    Vector,
    /// A (nested) array of `dtype`, nested as deep as `shape` is long.
    #[default]
    Array,
    /// `array<struct<fields>>`: a per-row list of dicts of tensors (detections).
    Structs,
    /// An `[H, W]` class map (0..=255) as an 8-bit greyscale PNG.
    Png,
    /// The class of a per-row class vector `[K]`: its argmax (the first on ties), float64
    /// (Spark ML's `prediction`).
    Prediction,
    /// The name of that class: `labels[argmax]` (utf8).
    Label,
    /// The `k` best classes, best first (`k` is the call's `top_k`, at most K):
    /// `list<struct<index int32, label utf8, probability float32>>`.
    #[serde(rename = "top_k")]
    TopK,
}

impl ColumnKind {
    /// The class writers: one value per row from a per-row class vector `[K]`.
    pub fn is_class(self) -> bool {
        matches!(
            self,
            ColumnKind::Prediction | ColumnKind::Label | ColumnKind::TopK
        )
    }
}

/// `outputs[j].post[k]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostOp {
    pub op: PostKind,
    /// A per-row axis (negative counts from the end; default -1). Not allowed on pooling ops.
    #[serde(default)]
    pub axis: Option<i64>,
    /// A pooling op: the `mask` input that marks the real tokens of the rows' axis 0.
    #[serde(default)]
    pub mask: Option<String>,
}

impl PostOp {
    /// The per-row axis (default -1).
    pub fn axis(&self) -> i64 {
        self.axis.unwrap_or(-1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostKind {
    Softmax,
    Sigmoid,
    /// The index of the largest value (the first on ties, like `torch.argmax`); the axis goes.
    Argmax,
    /// `[T, H]` -> `[H]`: the mean over the tokens `mask` marks (sentence-transformers'
    /// `Pooling(pooling_mode="mean")`: `sum(x*m) / clamp(sum(m), 1e-9)`).
    MeanPool,
    /// `[T, H]` -> `[H]`: the first token (`[CLS]`; sentence-transformers' `cls`).
    ClsPool,
    /// `[T, H]` -> `[H]`: the largest value over the tokens `mask` marks (padding set to -inf,
    /// sentence-transformers' `max`).
    MaxPool,
    /// `x / max(||x||_2, 1e-12)` over `axis` (`torch.nn.functional.normalize`,
    /// sentence-transformers' `Normalize`).
    L2Normalize,
}

/// `outputs[j].fields[k]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDecl {
    pub name: String,
    /// The dict key (default: `name`).
    #[serde(default)]
    pub from: Option<String>,
    /// Default float32.
    #[serde(default)]
    pub dtype: Option<DType>,
    /// Per-entry shape: `[]` (default) a scalar, `[4]` an array of 4.
    #[serde(default)]
    pub shape: Vec<i64>,
}

impl FieldDecl {
    pub fn key(&self) -> &str {
        self.from.as_deref().unwrap_or(&self.name)
    }
    pub fn dtype(&self) -> DType {
        self.dtype.unwrap_or(DType::Float32)
    }
}

impl InputDecl {
    /// The column(s) the input reads (generated kinds, `mask` and `type_ids`, read none; a
    /// `text` input reads its one column).
    pub fn columns(&self) -> Vec<String> {
        match (&self.kind, &self.column) {
            (k, _) if k.is_generated() => vec![],
            (_, Some(c)) => c.names().into_iter().map(str::to_string).collect(),
            (_, None) => vec![self.name.clone()],
        }
    }

    /// The most values one row may hold in a call that asks for `call` (0: the spec's).
    pub fn row_element_limit(&self, call: u64) -> u64 {
        crate::limits::effective(
            self.max_row_elements,
            crate::limits::DEFAULT_MAX_ROW_ELEMENTS,
            call,
        )
    }

    /// The most UTF-8 bytes one text row may hold in a call that asks for `call` (0: the
    /// spec's).
    pub fn text_byte_limit(&self, call: u64) -> u64 {
        crate::limits::effective(
            self.max_text_bytes,
            crate::limits::DEFAULT_MAX_TEXT_BYTES,
            call,
        )
    }

    /// Whether the shape has a variable dimension.
    pub fn is_ragged(&self) -> bool {
        self.shape.contains(&-1)
    }

    /// A fixed-size image input as a version-1 spec (what [`crate::preprocess::Preprocessor`]
    /// is built from); `None` for other kinds or variable sizes.
    pub fn image_spec(&self) -> Option<ModelSpec> {
        if self.kind != InputKind::Image {
            return None;
        }
        let [c, h, w] = self.shape[..] else {
            return None;
        };
        if h < 1 || w < 1 {
            return None;
        }
        Some(ModelSpec {
            input: InputSpec {
                height: h as u32,
                width: w as u32,
                channels: c as u32,
                channel_order: self.channel_order,
            },
            preprocess: self.preprocess.clone().unwrap_or_default(),
            labels: None,
            output: OutputKind::Probabilities,
            featurize: None,
            sha256: None,
            precision: None,
            cpu: None,
        })
    }
}

impl OutputDecl {
    /// The column's element type after `post` (see [`OutputDecl::dtype`]).
    pub fn dtype(&self) -> DType {
        let argmax = self.post.last().is_some_and(|p| p.op == PostKind::Argmax);
        match (self.dtype, self.column) {
            (Some(d), _) => d,
            (None, ColumnKind::Png) => DType::Uint8,
            (None, ColumnKind::Prediction | ColumnKind::Label) => DType::Float64,
            (None, ColumnKind::TopK) => DType::Float32,
            (None, ColumnKind::Scalar) if argmax => DType::Int64,
            (None, ColumnKind::Scalar | ColumnKind::Vector) => DType::Float64,
            (None, _) if argmax => DType::Int32,
            (None, _) => DType::Float32,
        }
    }

    /// The per-row rank after `post`, where it is known (`array`: `shape`'s length or 1).
    pub fn rank(&self) -> usize {
        match self.column {
            ColumnKind::Scalar => 0,
            ColumnKind::Vector => 1,
            ColumnKind::Png => 2,
            ColumnKind::Structs | ColumnKind::TopK => 1,
            ColumnKind::Prediction | ColumnKind::Label => 0,
            ColumnKind::Array => self.shape.as_ref().map_or(1, Vec::len),
        }
    }
}

impl GeneralSpec {
    /// Parses and validates; the error names the field.
    pub fn from_json(text: &str) -> std::result::Result<GeneralSpec, String> {
        let mut spec: GeneralSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        spec.normalize();
        spec.validate()?;
        Ok(spec)
    }

    /// Fills what a kind implies: a `text` input's rows are `[len]` token ids padded to the
    /// batch's longest (`shape: [-1]`, `ragged: "pad"`, `pad_value` 0 unless written), so the
    /// padding and mask code of tensor inputs serves it unchanged.
    pub fn normalize(&mut self) {
        for d in &mut self.inputs {
            if d.kind == InputKind::Text {
                if d.shape.is_empty() {
                    d.shape = vec![-1];
                }
                if d.ragged.is_none() {
                    d.ragged = Some(Ragged::Pad);
                }
                if d.pad_value.is_none() {
                    d.pad_value = Some(0.0);
                }
            }
        }
    }

    /// A version-1 image spec as a general one (its lowering): one input `image` (the
    /// caller's column, else the batch's only column) and the outputs of version 1's calls,
    /// each element 0 of `forward` (a lone tensor, or a tuple's first) unless it says:
    /// - `output`: the class vector as a float64 vector, softmax applied to `logits` (the
    ///   `predict` preset: what `TorchModel` gives);
    /// - `prediction`, `probability` (float32 vector), `predicted_label`, `top_k`: the same
    ///   vector through the class writers (the `score` preset);
    /// - `features`: `featurize.method`'s element 0, or element `featurize.output_index`,
    ///   flattened to float32 (the `featurize` preset), when the spec has a valid `featurize`.
    pub fn from_image(s: &ModelSpec) -> GeneralSpec {
        let softmax = match s.output {
            OutputKind::Logits => vec![PostOp {
                op: PostKind::Softmax,
                axis: None,
                mask: None,
            }],
            OutputKind::Probabilities => vec![],
        };
        let class = |name: &str, column: ColumnKind, dtype: Option<DType>| OutputDecl {
            name: name.into(),
            from: None,
            column,
            dtype,
            shape: None,
            post: softmax.clone(),
            fields: vec![],
            method: None,
            labels: match column {
                ColumnKind::Label | ColumnKind::TopK => s.labels.clone(),
                _ => None,
            },
            output_index: Some(0),
        };
        let mut outputs = vec![
            class(V1_OUTPUT, ColumnKind::Vector, None),
            class("prediction", ColumnKind::Prediction, None),
            class("probability", ColumnKind::Vector, Some(DType::Float32)),
            class("predicted_label", ColumnKind::Label, None),
            class("top_k", ColumnKind::TopK, None),
        ];
        if let Some(source) = s.featurize.as_ref().and_then(|f| f.source().ok()) {
            let (method, index) = match source {
                FeatureSource::Method(m) => (Some(m), 0),
                FeatureSource::OutputIndex(i) => (None, i),
            };
            outputs.push(OutputDecl {
                name: V1_FEATURES.into(),
                from: None,
                column: ColumnKind::Array,
                dtype: Some(DType::Float32),
                shape: None,
                post: vec![],
                fields: vec![],
                method,
                labels: None,
                output_index: Some(index),
            });
        }
        GeneralSpec {
            spec_version: 2,
            inputs: vec![InputDecl {
                name: V1_INPUT.into(),
                kind: InputKind::Image,
                column: None,
                dtype: DType::Float32,
                shape: vec![
                    i64::from(s.input.channels),
                    i64::from(s.input.height),
                    i64::from(s.input.width),
                ],
                ragged: None,
                pad_value: None,
                of: None,
                nan: NanPolicy::Pass,
                channel_order: s.input.channel_order,
                preprocess: Some(s.preprocess.clone()),
                tokenizer: None,
                max_length: None,
                vocab_size: None,
                tokenizer_sha256: None,
                add_special_tokens: None,
                max_row_elements: None,
                max_text_bytes: None,
            }],
            outputs,
            method: None,
            sha256: s.sha256.clone(),
            precision: s.precision,
            cpu: s.cpu.clone(),
            lowered_from_v1: true,
        }
    }

    /// The method output `o` comes from: its own, else the spec's (`None`: `forward`).
    pub fn method_of<'a>(&'a self, o: &'a OutputDecl) -> Option<&'a str> {
        o.method.as_deref().or(self.method.as_deref())
    }

    /// Every rule of the format; the error names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.spec_version != 2 {
            return Err(format!("spec_version {} is not 2", self.spec_version));
        }
        if self.inputs.is_empty() {
            return Err("inputs must have at least one entry".into());
        }
        if self.outputs.is_empty() {
            return Err("outputs must have at least one entry".into());
        }
        let mut names = HashSet::new();
        for (i, d) in self.inputs.iter().enumerate() {
            let at = format!("inputs[{i}]");
            if d.name.is_empty() || d.name == "error" {
                return Err(format!("{at}.name must be non-empty and not `error`"));
            }
            if !names.insert(d.name.as_str()) {
                return Err(format!("{at}.name `{}` is declared twice", d.name));
            }
            self.validate_input(&at, d)?;
        }
        let mut names = HashSet::new();
        for (j, o) in self.outputs.iter().enumerate() {
            let at = format!("outputs[{j}]");
            if o.name.is_empty() || o.name == "error" {
                return Err(format!("{at}.name must be non-empty and not `error`"));
            }
            if !names.insert(o.name.as_str()) {
                return Err(format!("{at}.name `{}` is declared twice", o.name));
            }
            let at = format!("outputs.{}", o.name);
            validate_output(&at, o)?;
            self.validate_post(&at, o)?;
        }
        if let Some(sha) = &self.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err("sha256 must be 64 hex digits".into());
        }
        if let Some(m) = &self.method
            && m.is_empty()
        {
            return Err("method must not be empty (omit it to call forward)".into());
        }
        Ok(())
    }

    fn validate_input(&self, at: &str, d: &InputDecl) -> std::result::Result<(), String> {
        // First: a text input's shape and ragged are implied, and its messages say so.
        if d.kind == InputKind::Text {
            check_text(at, d)?;
        }
        if let Some(bad) = d.shape.iter().find(|&&s| s == 0 || s < -1) {
            return Err(format!(
                "{at}.shape: {bad} is not a size (positive, or -1 for a variable dimension)"
            ));
        }
        if d.kind != InputKind::Image && (d.channel_order.is_some() || d.preprocess.is_some()) {
            return Err(format!(
                "{at}: channel_order and preprocess belong to `kind: \"image\"` inputs"
            ));
        }
        if !d.kind.is_generated() && d.of.is_some() {
            return Err(format!(
                "{at}.of belongs to `kind: \"mask\"` and `kind: \"type_ids\"` inputs"
            ));
        }
        if d.kind != InputKind::Text {
            let text_only = [
                ("tokenizer", d.tokenizer.is_some()),
                ("max_length", d.max_length.is_some()),
                ("vocab_size", d.vocab_size.is_some()),
                ("tokenizer_sha256", d.tokenizer_sha256.is_some()),
                ("add_special_tokens", d.add_special_tokens.is_some()),
            ];
            if let Some((field, _)) = text_only.iter().find(|(_, set)| *set) {
                return Err(format!("{at}.{field} belongs to `kind: \"text\"` inputs"));
            }
        }
        if d.max_text_bytes == Some(0) || d.max_row_elements == Some(0) {
            let field = if d.max_text_bytes == Some(0) {
                "max_text_bytes"
            } else {
                "max_row_elements"
            };
            return Err(format!("{at}.{field} must be at least 1"));
        }
        if d.kind != InputKind::Text && d.max_text_bytes.is_some() {
            return Err(format!(
                "{at}.max_text_bytes belongs to `kind: \"text\"` inputs"
            ));
        }
        if !matches!(d.kind, InputKind::Tensor | InputKind::Image) && d.max_row_elements.is_some() {
            return Err(format!(
                "{at}.max_row_elements belongs to `kind: \"tensor\"` and `kind: \"image\"` \
                 inputs (a text row's ids are bounded by max_length)"
            ));
        }
        if d.kind.is_generated()
            && (!d.shape.is_empty() || d.ragged.is_some() || d.pad_value.is_some())
        {
            let what = match d.kind {
                InputKind::Mask => "a mask takes its",
                _ => "type_ids take their",
            };
            return Err(format!(
                "{at}: {what} shape from the input in `of`; remove shape, ragged and \
                 pad_value"
            ));
        }
        match (d.is_ragged(), d.ragged) {
            (true, None) => {
                return Err(format!(
                    "{at}.shape has a variable dimension (-1), so {at}.ragged must say how rows \
                     form a batch: \"pad\", \"list\" or \"single\""
                ));
            }
            (false, Some(_)) if d.kind != InputKind::Mask => {
                return Err(format!(
                    "{at}.ragged is set but {at}.shape has no variable dimension (-1)"
                ));
            }
            _ => {}
        }
        if let Some(v) = d.pad_value {
            if d.ragged != Some(Ragged::Pad) {
                return Err(format!("{at}.pad_value needs ragged: \"pad\""));
            }
            if !d.dtype.holds(v) {
                return Err(format!(
                    "{at}.pad_value {v} is not a value of dtype {}",
                    d.dtype
                ));
            }
        }
        if d.nan == NanPolicy::Error && !d.dtype.is_float() && d.kind == InputKind::Tensor {
            return Err(format!("{at}.nan: \"error\" needs a float dtype"));
        }
        match d.kind {
            InputKind::Tensor => {
                if let Some(Columns::Gather(cs)) = &d.column {
                    if cs.is_empty() {
                        return Err(format!("{at}.column must not be an empty list"));
                    }
                    if d.shape != [cs.len() as i64] {
                        return Err(format!(
                            "{at}.column gathers {} scalar columns, so {at}.shape must be [{}], \
                             not {:?}",
                            cs.len(),
                            cs.len(),
                            d.shape
                        ));
                    }
                }
            }
            InputKind::Image => {
                if d.dtype != DType::Float32 {
                    return Err(format!("{at}.dtype: an image input is float32"));
                }
                if matches!(d.column, Some(Columns::Gather(_))) {
                    return Err(format!("{at}.column: an image input reads one column"));
                }
                let [c, h, w] = d.shape[..] else {
                    return Err(format!(
                        "{at}.shape: an image input's shape is [channels, height, width]"
                    ));
                };
                if c < 1 {
                    return Err(format!("{at}.shape: the channel count must be fixed"));
                }
                if h == -1 || w == -1 {
                    if h != -1 || w != -1 || d.ragged != Some(Ragged::List) {
                        return Err(format!(
                            "{at}.shape: images of varying size are [C, -1, -1] with ragged: \
                             \"list\" (each image at its own size)"
                        ));
                    }
                    if let Some(p) = &d.preprocess
                        && (p.resize.is_some() || p.center_crop.is_some())
                    {
                        return Err(format!(
                            "{at}.preprocess: resize or center_crop give every image one size; \
                             then declare it in {at}.shape"
                        ));
                    }
                    // The channel rules and the numbers, on a stand-in 1x1 size.
                    let mut probe = d.clone();
                    probe.shape = vec![c, 1, 1];
                    probe.ragged = None;
                    check_image(at, &probe)?;
                } else {
                    check_image(at, d)?;
                }
            }
            InputKind::Mask => {
                if d.column.is_some() {
                    return Err(format!("{at}.column: a mask is generated, not read"));
                }
                if !d.shape.is_empty() || d.ragged.is_some() || d.pad_value.is_some() {
                    return Err(format!(
                        "{at}: a mask takes its shape from the input in `of`; remove shape, \
                         ragged and pad_value"
                    ));
                }
                let Some(of) = &d.of else {
                    return Err(format!(
                        "{at}.of must name the padded input this mask marks"
                    ));
                };
                match self.inputs.iter().find(|x| &x.name == of) {
                    Some(x) if x.ragged == Some(Ragged::Pad) => {}
                    Some(_) => {
                        return Err(format!(
                            "{at}.of: input `{of}` is not padded (ragged: \"pad\"), so it has \
                             nothing to mask"
                        ));
                    }
                    None => return Err(format!("{at}.of: no input is named `{of}`")),
                }
            }
            // Checked first, in validate_input.
            InputKind::Text => {}
            InputKind::TypeIds => {
                if d.column.is_some() {
                    return Err(format!("{at}.column: type_ids are generated, not read"));
                }
                if !d.shape.is_empty() || d.ragged.is_some() || d.pad_value.is_some() {
                    return Err(format!(
                        "{at}: type_ids take their shape from the text input in `of`; remove \
                         shape, ragged and pad_value"
                    ));
                }
                if d.nan != NanPolicy::Pass {
                    return Err(format!("{at}.nan: type_ids are generated, never NaN"));
                }
                let Some(of) = &d.of else {
                    return Err(format!(
                        "{at}.of must name the text input these type ids go with"
                    ));
                };
                match self.inputs.iter().find(|x| &x.name == of) {
                    Some(x) if x.kind == InputKind::Text => {}
                    Some(_) => {
                        return Err(format!(
                            "{at}.of: input `{of}` is not a `kind: \"text\"` input"
                        ));
                    }
                    None => return Err(format!("{at}.of: no input is named `{of}`")),
                }
            }
        }
        Ok(())
    }

    /// The rules of `post` that need the inputs: a pooling op's `mask` names a `kind: "mask"`
    /// input; pooling ops take no `axis` (they reduce the rows' token axis 0); only pooling
    /// ops take a `mask`.
    fn validate_post(&self, at: &str, o: &OutputDecl) -> std::result::Result<(), String> {
        for (k, p) in o.post.iter().enumerate() {
            let at = format!("{at}.post[{k}]");
            let pool = matches!(
                p.op,
                PostKind::MeanPool | PostKind::ClsPool | PostKind::MaxPool
            );
            if !pool {
                if p.mask.is_some() {
                    return Err(format!(
                        "{at}.mask belongs to the pooling ops (mean_pool, cls_pool, max_pool)"
                    ));
                }
                continue;
            }
            if p.axis.is_some() {
                return Err(format!(
                    "{at}.axis: a pooling op reduces the tokens (axis 0 of each [T, H] row); \
                     remove axis"
                ));
            }
            let Some(mask) = &p.mask else {
                return Err(format!(
                    "{at}.mask must name the `kind: \"mask\"` input that marks the real tokens"
                ));
            };
            match self.inputs.iter().find(|x| &x.name == mask) {
                Some(x) if x.kind == InputKind::Mask => {}
                Some(_) => {
                    return Err(format!(
                        "{at}.mask: input `{mask}` is not a `kind: \"mask\"` input"
                    ));
                }
                None => return Err(format!("{at}.mask: no input is named `{mask}`")),
            }
        }
        Ok(())
    }
}

/// A `text` input (after [`GeneralSpec::normalize`]): token ids from one string column.
fn check_text(at: &str, d: &InputDecl) -> std::result::Result<(), String> {
    if !matches!(d.dtype, DType::Int64 | DType::Int32) {
        return Err(format!(
            "{at}.dtype: a text input gives token ids, int64 or int32, not {}; write \
             \"dtype\": \"int64\"",
            d.dtype
        ));
    }
    if matches!(d.column, Some(Columns::Gather(_))) {
        return Err(format!("{at}.column: a text input reads one column"));
    }
    if d.shape != [-1] {
        return Err(format!(
            "{at}.shape: a text input's rows are [-1] (token ids of any length), not {:?}; \
             omit shape",
            d.shape
        ));
    }
    if d.ragged != Some(Ragged::Pad) {
        return Err(format!(
            "{at}.ragged: a text input is padded to the batch's longest row (\"pad\"); omit \
             ragged"
        ));
    }
    if d.nan != NanPolicy::Pass {
        return Err(format!("{at}.nan: token ids are never NaN; remove nan"));
    }
    match d.tokenizer.as_deref() {
        None | Some("") => {
            return Err(format!(
                "{at}.tokenizer must name the tokenizer.json file beside the spec"
            ));
        }
        Some(t) if t.contains('/') || t.contains('\\') || t.contains("..") || t == "." => {
            return Err(format!(
                "{at}.tokenizer `{t}` must be a file name in the spec's folder (no `/` or \
                 `..`): the tokenizer ships with the model"
            ));
        }
        Some(_) => {}
    }
    match d.max_length {
        None => {
            return Err(format!(
                "{at}.max_length must be set: the most tokens per row, [CLS] and [SEP] \
                 included (the model's max_seq_length)"
            ));
        }
        Some(n) if n < 2 => {
            return Err(format!(
                "{at}.max_length {n} is too small: at least 2 ([CLS] and [SEP])"
            ));
        }
        Some(_) => {}
    }
    if d.vocab_size == Some(0) {
        return Err(format!("{at}.vocab_size must be positive"));
    }
    if let Some(sha) = &d.tokenizer_sha256
        && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(format!("{at}.tokenizer_sha256 must be 64 hex digits"));
    }
    Ok(())
}

fn check_image(at: &str, d: &InputDecl) -> std::result::Result<(), String> {
    let spec = d
        .image_spec()
        .ok_or_else(|| format!("{at}.shape: not an image shape"))?;
    spec.validate()
        .map_err(|e| format!("{at}: {}", e.replace("input.channels", "shape[0]")))
}

fn validate_output(at: &str, o: &OutputDecl) -> std::result::Result<(), String> {
    if let Some(FromPath::Path(p)) = &o.from
        && p.is_empty()
    {
        return Err(format!(
            "{at}.from must not be an empty path (omit it instead)"
        ));
    }
    if let Some(shape) = &o.shape
        && let Some(bad) = shape.iter().find(|&&s| s == 0 || s < -1)
    {
        return Err(format!("{at}.shape: {bad} is not a size (positive or -1)"));
    }
    let argmax_last = o.post.last().is_some_and(|p| p.op == PostKind::Argmax);
    match o.column {
        ColumnKind::Structs => {
            if o.fields.is_empty() {
                return Err(format!(
                    "{at}.fields: a `structs` column needs its fields (dict keys)"
                ));
            }
            if !o.post.is_empty() || o.shape.is_some() || o.dtype.is_some() {
                return Err(format!(
                    "{at}: post, shape and dtype belong to the fields of a `structs` column"
                ));
            }
            let mut names = HashSet::new();
            for (k, f) in o.fields.iter().enumerate() {
                if !names.insert(f.name.as_str()) || f.name.is_empty() {
                    return Err(format!(
                        "{at}.fields[{k}].name `{}` is empty or repeated",
                        f.name
                    ));
                }
                if f.shape.len() > 1 || f.shape.iter().any(|&s| s == 0 || s < -1) {
                    return Err(format!(
                        "{at}.fields[{k}].shape must be [] or [N] (N positive or -1)"
                    ));
                }
                if f.dtype == Some(DType::Bool) {
                    return Err(format!(
                        "{at}.fields[{k}].dtype: bool fields are not supported"
                    ));
                }
            }
        }
        _ if !o.fields.is_empty() => {
            return Err(format!("{at}.fields belongs to `column: \"structs\"`"));
        }
        ColumnKind::Png => {
            if !argmax_last {
                return Err(format!(
                    "{at}: a `png` column encodes a class map, so its post must end with argmax"
                ));
            }
            if o.dtype.is_some_and(|d| d != DType::Uint8) {
                return Err(format!("{at}.dtype: a png column's pixels are uint8"));
            }
            if o.shape.as_ref().is_some_and(|s| s.len() != 2) {
                return Err(format!("{at}.shape: a png column is [height, width]"));
            }
        }
        ColumnKind::Scalar => {
            if o.shape
                .as_ref()
                .is_some_and(|s| !(s.is_empty() || s == &[1]))
            {
                return Err(format!(
                    "{at}.shape: a `scalar` column holds one value per row ([] or [1])"
                ));
            }
        }
        ColumnKind::Vector => {
            if o.shape.as_ref().is_some_and(|s| s.len() != 1) {
                return Err(format!(
                    "{at}.shape: a `vector` column is 1-D ([N] or [-1])"
                ));
            }
            if o.dtype
                .is_some_and(|d| d != DType::Float64 && d != DType::Float32)
            {
                return Err(format!(
                    "{at}.dtype: a vector holds float64 (an ML vector) or float32"
                ));
            }
        }
        ColumnKind::Prediction | ColumnKind::Label | ColumnKind::TopK => {
            if o.shape.as_ref().is_some_and(|s| s.len() != 1) {
                return Err(format!(
                    "{at}.shape: a class column reads a per-row class vector ([K] or [-1])"
                ));
            }
            if o.dtype.is_some() {
                return Err(format!(
                    "{at}.dtype: a `{}` column's type is fixed (docs/models-outputs.md)",
                    match o.column {
                        ColumnKind::Prediction => "prediction",
                        ColumnKind::Label => "label",
                        _ => "top_k",
                    }
                ));
            }
            if argmax_last {
                return Err(format!(
                    "{at}.post: a class column takes the class vector itself (it computes the \
                     argmax); remove argmax"
                ));
            }
        }
        ColumnKind::Array => {}
    }
    if o.labels.is_some() && !matches!(o.column, ColumnKind::Label | ColumnKind::TopK) {
        return Err(format!(
            "{at}.labels belongs to `column: \"label\"` or `\"top_k\"`"
        ));
    }
    if o.method.as_deref() == Some("") {
        return Err(format!(
            "{at}.method must not be empty (omit it to use the spec's)"
        ));
    }
    if o.dtype == Some(DType::Bool) {
        return Err(format!(
            "{at}.dtype: bool columns are not supported; use uint8"
        ));
    }
    if o.column != ColumnKind::Png
        && o.column != ColumnKind::Structs
        && !o.column.is_class()
        && argmax_last
        && o.dtype.is_some_and(DType::is_float)
    {
        return Err(format!("{at}.dtype: argmax gives integer class indices"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test, with its location.
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TEXT: &str = r#"{"spec_version": 2,
      "inputs": [
        {"name": "input_ids", "kind": "text", "column": "text", "dtype": "int64",
         "tokenizer": "minilm.tokenizer.json", "max_length": 256, "vocab_size": 30522},
        {"name": "attention_mask", "kind": "mask", "of": "input_ids", "dtype": "int64"},
        {"name": "token_type_ids", "kind": "type_ids", "of": "input_ids", "dtype": "int64"}],
      "outputs": [
        {"name": "embedding", "column": "vector", "shape": [384],
         "post": [{"op": "mean_pool", "mask": "attention_mask"}, {"op": "l2_normalize"}]}]}"#;

    fn text_with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<GeneralSpec, String> {
        let mut v: serde_json::Value = serde_json::from_str(TEXT).unwrap();
        edit(&mut v);
        GeneralSpec::from_json(&v.to_string())
    }

    fn refused(edit: impl FnOnce(&mut serde_json::Value), needles: &[&str]) {
        let e = text_with(edit).unwrap_err();
        for n in needles {
            assert!(e.contains(n), "`{e}` does not contain `{n}`");
        }
    }

    #[test]
    fn text_input_is_normalized_to_padded_ids() {
        let g = text_with(|_| {}).unwrap();
        let d = &g.inputs[0];
        assert_eq!(d.shape, vec![-1]);
        assert_eq!(d.ragged, Some(Ragged::Pad));
        assert_eq!(d.pad_value, Some(0.0));
        assert_eq!(d.columns(), vec!["text".to_string()]);
        assert!(g.inputs[1].columns().is_empty());
        assert!(g.inputs[2].columns().is_empty());
        assert_eq!(g.outputs[0].post[1].axis(), -1);
        // A written pad value (RoBERTa's pad id is 1) is kept.
        let g = text_with(|v| v["inputs"][0]["pad_value"] = 1.into()).unwrap();
        assert_eq!(g.inputs[0].pad_value, Some(1.0));
        // Writing the implied shape and ragged is allowed.
        text_with(|v| {
            v["inputs"][0]["shape"] = serde_json::json!([-1]);
            v["inputs"][0]["ragged"] = "pad".into();
        })
        .unwrap();
        // int32 ids, no optional fields.
        text_with(|v| {
            v["inputs"][0]["dtype"] = "int32".into();
            v["inputs"][0].as_object_mut().unwrap().remove("vocab_size");
        })
        .unwrap();
    }

    #[test]
    fn text_input_rules_name_the_field() {
        refused(
            |v| {
                v["inputs"][0].as_object_mut().unwrap().remove("dtype");
            },
            &["inputs[0].dtype", "float32", "\"dtype\": \"int64\""],
        );
        refused(
            |v| {
                v["inputs"][0].as_object_mut().unwrap().remove("tokenizer");
            },
            &["inputs[0].tokenizer"],
        );
        for bad in ["../t.json", "sub/t.json", "..", "a\\b.json"] {
            refused(
                |v| v["inputs"][0]["tokenizer"] = bad.into(),
                &["inputs[0].tokenizer", "file name"],
            );
        }
        refused(
            |v| {
                v["inputs"][0].as_object_mut().unwrap().remove("max_length");
            },
            &["inputs[0].max_length must be set"],
        );
        refused(
            |v| v["inputs"][0]["max_length"] = 1.into(),
            &["inputs[0].max_length 1", "at least 2"],
        );
        refused(
            |v| v["inputs"][0]["column"] = serde_json::json!(["a", "b"]),
            &["inputs[0].column", "one column"],
        );
        refused(
            |v| v["inputs"][0]["shape"] = serde_json::json!([5]),
            &["inputs[0].shape", "[-1]"],
        );
        refused(
            |v| v["inputs"][0]["ragged"] = "list".into(),
            &["inputs[0].ragged", "pad"],
        );
        refused(
            |v| v["inputs"][0]["nan"] = "error".into(),
            &["inputs[0].nan"],
        );
        refused(
            |v| v["inputs"][0]["channel_order"] = "BGR".into(),
            &["inputs[0]", "channel_order"],
        );
        refused(
            |v| v["inputs"][0]["preprocess"] = serde_json::json!({"scale": 1.0}),
            &["inputs[0]", "preprocess"],
        );
        refused(
            |v| v["inputs"][0]["tokenizer_sha256"] = "abc".into(),
            &["inputs[0].tokenizer_sha256", "64 hex"],
        );
        refused(
            |v| v["inputs"][0]["vocab_size"] = 0.into(),
            &["inputs[0].vocab_size"],
        );
        refused(
            |v| v["inputs"][0]["pad_value"] = 0.5.into(),
            &["inputs[0].pad_value"],
        );
    }

    #[test]
    fn tokenizer_fields_belong_to_text_inputs() {
        for (field, value) in [
            ("tokenizer", serde_json::json!("t.json")),
            ("max_length", serde_json::json!(8)),
            ("vocab_size", serde_json::json!(8)),
            ("tokenizer_sha256", serde_json::json!("0".repeat(64))),
            ("add_special_tokens", serde_json::json!(false)),
        ] {
            refused(
                |v| v["inputs"][1][field] = value.clone(),
                &[&format!("inputs[1].{field} belongs to"), "text"],
            );
        }
    }

    #[test]
    fn type_ids_need_a_text_input() {
        refused(
            |v| {
                v["inputs"][2].as_object_mut().unwrap().remove("of");
            },
            &["inputs[2].of must name"],
        );
        refused(
            |v| v["inputs"][2]["of"] = "attention_mask".into(),
            &["inputs[2].of", "`attention_mask` is not", "text"],
        );
        refused(
            |v| v["inputs"][2]["of"] = "nope".into(),
            &["inputs[2].of: no input is named `nope`"],
        );
        refused(
            |v| v["inputs"][2]["column"] = "t".into(),
            &["inputs[2].column", "generated"],
        );
        refused(
            |v| v["inputs"][2]["shape"] = serde_json::json!([-1]),
            &["inputs[2]", "remove shape"],
        );
        // `of` stays refused on kinds that are not generated.
        refused(
            |v| v["inputs"][0]["of"] = "x".into(),
            &["inputs[0].of belongs to"],
        );
    }

    #[test]
    fn pooling_ops_need_a_mask_input_and_no_axis() {
        refused(
            |v| {
                v["outputs"][0]["post"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("mask");
            },
            &["outputs.embedding.post[0].mask must name"],
        );
        for op in ["cls_pool", "max_pool"] {
            refused(
                |v| {
                    v["outputs"][0]["post"][0] = serde_json::json!({"op": op});
                },
                &["outputs.embedding.post[0].mask"],
            );
        }
        refused(
            |v| v["outputs"][0]["post"][0]["mask"] = "input_ids".into(),
            &["outputs.embedding.post[0].mask", "`input_ids` is not"],
        );
        refused(
            |v| v["outputs"][0]["post"][0]["mask"] = "nope".into(),
            &["outputs.embedding.post[0].mask: no input is named `nope`"],
        );
        refused(
            |v| v["outputs"][0]["post"][0]["axis"] = 0.into(),
            &["outputs.embedding.post[0].axis", "remove axis"],
        );
        // l2_normalize: an axis is fine, a mask is not; neither for softmax/sigmoid/argmax.
        text_with(|v| v["outputs"][0]["post"][1]["axis"] = 0.into()).unwrap();
        for (k, op) in [
            (1, "l2_normalize"),
            (1, "softmax"),
            (1, "sigmoid"),
            (1, "argmax"),
        ] {
            refused(
                |v| {
                    v["outputs"][0]["post"][k] =
                        serde_json::json!({"op": op, "mask": "attention_mask"});
                },
                &[&format!("outputs.embedding.post[{k}].mask belongs to")],
            );
        }
        for op in ["cls_pool", "max_pool"] {
            text_with(|v| v["outputs"][0]["post"][0]["op"] = op.into()).unwrap();
        }
    }

    #[test]
    fn mask_of_may_name_a_text_input() {
        let g = text_with(|_| {}).unwrap();
        assert_eq!(g.inputs[1].of.as_deref(), Some("input_ids"));
        // A model with no type ids and no mask (ids only) is fine too.
        text_with(|v| {
            v["inputs"] = serde_json::json!([v["inputs"][0].clone()]);
            v["outputs"][0]["post"] = serde_json::json!([{"op": "l2_normalize"}]);
        })
        .unwrap();
    }
}
