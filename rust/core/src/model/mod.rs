//! The model registry: one loaded model per (file version, spec, device, precision) per process.
//!
//! A model file is a TorchScript module (`.pt`, [`torchscript`]) or an AOTInductor package
//! (`.pt2`, [`aoti`]); [`Format::detect`] tells them apart by content, and [`Model`] hides
//! which one runs behind one [`Backend`] enum.
//!
//! Spark runs several task threads in one executor JVM (and a Python worker may score several
//! partitions in a row); they all get the same `Arc<Model>`. Loading is lazy and happens once:
//! concurrent first callers wait on a per-key lock while one of them loads. A failed load
//! leaves the slot empty, so the next call tries again and reports the same error.
//!
//! # When a model reloads
//! A slot is keyed on the canonical model and spec paths, the device, precision and layout, and
//! remembers the [`Version`] it was loaded from: the model file's identity (device, inode,
//! length, mtime and ctime in ns, from `fstat` of the descriptor it is read through) and the
//! sha256 of the spec's bytes (which holds the labels, preprocessing and any `sha256` pin).
//! Every open re-checks both (one `fstat`, one read of a small JSON); a different version loads
//! anew and replaces the slot's model, so the registry drops the stale one. Handles opened
//! before keep their `Arc<Model>`: the old model is freed when the last of them closes.
//! The one change this cannot see: the model rewritten in place (same inode) to the same length
//! within one tick of the file system's timestamp clock. A `sha256` pin in the spec is the strict
//! answer: a new model comes with a new pin, so its spec's digest differs and it always loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use once_cell::sync::Lazy;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::input::text::TextTokenizer;
use crate::preprocess::Preprocessor;
use crate::spec::general::InputKind;
use crate::spec::{FeatureSource, FilePrecision, GeneralSpec, ModelSpec, OutputKind, Spec};
use crate::value::{ModelInput, Value};

mod aoti;
mod format;
mod torchscript;
mod vision_ops;

pub use format::Format;

use aoti::Package;
use torchscript::Script;

/// How a caller opens a model (the FFI layers pass this as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path to the model: a TorchScript `.pt` or an AOTInductor `.pt2` package.
    pub model_path: PathBuf,
    /// The spec JSON; defaults to the model path with a `.json` extension.
    #[serde(default)]
    pub spec_path: Option<PathBuf>,
    /// `cpu` (default), `cuda` or `cuda:N`.
    #[serde(default = "cpu")]
    pub device: String,
    /// Intra-op threads for this caller's forward passes; default: all cores.
    #[serde(default)]
    pub num_threads: Option<usize>,
    /// `fp32` (default) or `bf16` (opt-in: a TorchScript model's weights and input are cast to
    /// bfloat16, so it must keep its weights as parameters, i.e. not be frozen; a package's
    /// precision is fixed when it is compiled, so `bf16` needs a package compiled in bf16).
    #[serde(default)]
    pub precision: Precision,
    /// Feed a TorchScript network NHWC ("channels last") tensors: oneDNN's convolutions are
    /// faster on them (ResNet-20 here: ~1.4x). Default true; results equal NCHW up to float
    /// rounding. Packages take the layout they were compiled for (see [`aoti`]).
    #[serde(default = "yes")]
    pub channels_last: bool,
    /// The inference engine this caller's forward passes go through (see [`crate::engine`]);
    /// not part of the model's identity: every engine of a file shares one loaded model.
    #[serde(default)]
    pub engine: crate::engine::EngineConfig,
}

fn yes() -> bool {
    true
}

fn cpu() -> String {
    "cpu".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl ModelConfig {
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        ModelConfig {
            model_path: model_path.into(),
            spec_path: None,
            device: cpu(),
            num_threads: None,
            precision: Precision::Fp32,
            channels_last: true,
            engine: crate::engine::EngineConfig::default(),
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::config("model config", e.to_string()))
    }

    /// The intra-op thread count this caller asked for, or every core.
    pub fn threads(&self) -> Result<usize> {
        match self.num_threads {
            Some(0) => Err(Error::config("num_threads", "must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }
}

/// A loaded model with its spec, shared by every thread of the process.
pub struct Model {
    path: PathBuf,
    spec: Spec,
    /// The spec in its general form (a version-1 spec as one image input and one output).
    general: GeneralSpec,
    /// Per input of `general`, in order: the tokenizer of a `text` input (loaded once, shared
    /// by every thread), `None` for other kinds.
    tokenizers: Vec<Option<Arc<TextTokenizer>>>,
    /// A version-1 spec's preprocessing (what `ImageScorer`/`ImageFeaturizer` run).
    preprocessor: Option<Preprocessor>,
    backend: Backend,
    device: Device,
    precision: Precision,
    /// Whether [`Model::run`] hands the backend NHWC-strided input (TorchScript only: a
    /// package's input layout is fixed when it is compiled).
    channels_last: bool,
    /// The input dtype the backend takes (bf16 when a TorchScript model was cast).
    input_kind: Kind,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("device", &self.device)
            .field("precision", &self.precision)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Canonical model path, canonical spec path, device, precision, channels-last.
type Key = (PathBuf, PathBuf, String, Precision, bool);
type Slot = Arc<Mutex<Option<(Version, Arc<Model>)>>>;

/// What one loaded model was made from. Two opens share a model only when both are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    model: FileId,
    /// sha256 of the spec file's bytes: exact, so a spec edit (labels, preprocess, a new
    /// `sha256` pin) always reloads, whatever its timestamps say.
    spec_sha256: [u8; 32],
}

/// A file's identity on this host (`stat(2)`): replacing it (rename, `cp` over it, a new
/// upload) changes the inode or the times; rewriting it in place changes mtime/ctime, to the
/// file system's timestamp granularity. ctime cannot be set by `touch` or `cp -p`, so a copy
/// that preserves mtime and length is still seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

static REGISTRY: Lazy<Mutex<HashMap<Key, Slot>>> = Lazy::new(|| Mutex::new(HashMap::new()));
static LOADS: AtomicU64 = AtomicU64::new(0);

/// How many models this process has loaded from disk (the "once per executor" proof). A model
/// file or spec that changed on disk and was opened again counts as one more load.
pub fn load_count() -> u64 {
    LOADS.load(Ordering::SeqCst)
}

/// The process-wide model for `config`, loading it on first use and again whenever the model
/// file or its spec changed on disk since it was loaded (see the module docs).
///
/// Errors: [`Error::ModelNotFound`] (model missing or unreadable), [`Error::Spec`] (spec missing,
/// unreadable or invalid), [`Error::Checksum`] (pinned sha256 differs), [`Error::Device`],
/// [`Error::ModelLoad`], [`Error::Config`].
pub fn get_or_load(config: &ModelConfig) -> Result<Arc<Model>> {
    // A load runs torch code and holds the registry's locks: inside the gate.
    let _inside = crate::lifecycle::try_enter()?;
    let device = parse_device(&config.device)?;
    let not_found = |e: std::io::Error| Error::ModelNotFound {
        path: config.model_path.clone(),
        reason: e.to_string(),
    };
    let path = std::fs::canonicalize(&config.model_path).map_err(not_found)?;
    let spec_path = config
        .spec_path
        .clone()
        .unwrap_or_else(|| ModelSpec::default_path(&config.model_path));
    let spec_error = |e: std::io::Error| Error::Spec {
        path: spec_path.clone(),
        reason: format!("cannot read: {e}"),
    };
    let spec_canonical = std::fs::canonicalize(&spec_path).map_err(spec_error)?;
    let key = (
        path.clone(),
        spec_canonical,
        format!("{device:?}"),
        config.precision,
        config.channels_last,
    );
    let slot = {
        // A poisoned lock only says a thread panicked holding it: the map is whole.
        let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        reg.entry(key).or_default().clone()
    };
    // A slot is emptied before each load and filled only by a finished one, so a slot whose
    // load panicked holds nothing stale: recover it, the next open loads again.
    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
    // The identity comes from the descriptor the bytes are read through, so it names exactly
    // the bytes loaded; the spec is parsed from the very bytes that were hashed.
    let mut file = std::fs::File::open(&path).map_err(not_found)?;
    let model_id = FileId::of(&file.metadata().map_err(not_found)?);
    let spec_bytes = std::fs::read(&spec_path).map_err(spec_error)?;
    let version = Version {
        model: model_id,
        spec_sha256: Sha256::digest(&spec_bytes).into(),
    };
    if let Some((loaded, model)) = guard.as_ref()
        && *loaded == version
        && model.tokenizers_unchanged()
    {
        return Ok(model.clone());
    }
    // A stale model leaves the registry now; handles that hold it keep it until they close.
    *guard = None;
    let mut bytes = Vec::with_capacity(usize::try_from(model_id.len).unwrap_or(0));
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(not_found)?;
    drop(file);
    let spec = Spec::from_bytes(&spec_path, &spec_bytes)?;
    // A text input's tokenizer file is named relative to the spec's folder.
    let spec_dir = spec_path.parent().unwrap_or(Path::new("."));
    let format = Format::detect(&path, &bytes).name();
    let model = Arc::new(load_or_error(&path, format, || {
        Model::load(&path, bytes, spec, spec_dir, device, config)
    })?);
    *guard = Some((version, model.clone()));
    LOADS.fetch_add(1, Ordering::SeqCst);
    // After the statics a load builds: the exit handler runs before their destructors.
    crate::lifecycle::register_exit_handler();
    Ok(model)
}

/// Runs a model load; a panic inside it (a tch wrapper, a tokenizer's first encode) becomes
/// this load's [`Error::ModelLoad`] instead of unwinding through the registry's locks.
fn load_or_error<T>(
    path: &Path,
    format: &'static str,
    load: impl FnOnce() -> Result<T>,
) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Error::ModelLoad {
            path: path.to_path_buf(),
            format,
            reason: format!("the loader panicked: {what}"),
        })
    })
}

/// `cpu`, `cuda`, `cuda:N`; a GPU that libtorch cannot see is an error, not a silent CPU run.
pub fn parse_device(name: &str) -> Result<Device> {
    let bad = |reason: String| Error::Device {
        device: name.to_string(),
        reason,
    };
    let index = match name.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => return Err(bad("expected `cpu`, `cuda` or `cuda:N`".into())),
        },
    };
    crate::sys::load_cuda_backend();
    let count = std::panic::catch_unwind(tch::Cuda::device_count).unwrap_or(0);
    if count <= 0 {
        return Err(bad(
            "libtorch sees no CUDA device on this host (no GPU, no driver, or a CPU-only torch)"
                .into(),
        ));
    }
    if index as i64 >= count {
        return Err(bad(format!("only {count} CUDA device(s) are visible")));
    }
    Ok(Device::Cuda(index))
}

/// What a forward pass should return per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Class probabilities (softmax of logits unless the spec says probabilities).
    Probabilities,
    /// The spec's featurize output, flattened.
    Features,
}

impl Model {
    /// Builds the model from the file's `bytes` and its parsed `spec` (both read by the caller);
    /// a text input's tokenizer is read from `spec_dir`.
    fn load(
        path: &Path,
        bytes: Vec<u8>,
        spec: Spec,
        spec_dir: &Path,
        device: Device,
        config: &ModelConfig,
    ) -> Result<Model> {
        let precision = config.precision;
        // Before the (slower) model: a bad tokenizer is a spec error naming its file.
        let general = spec.general();
        let tokenizers = general
            .inputs
            .iter()
            .enumerate()
            .map(|(i, d)| match d.kind {
                InputKind::Text => TextTokenizer::load(spec_dir, &format!("inputs[{i}]"), d)
                    .map(Arc::new)
                    .map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(expected) = spec.sha256() {
            let actual: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(Error::Checksum {
                    path: path.to_path_buf(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        if Format::detect(path, &bytes) == Format::TorchScript {
            vision_ops::ensure_registered(path)?;
        }
        crate::sys::tune_process();
        let (backend, channels_last, input_kind) = match Format::detect(path, &bytes) {
            Format::TorchScript => (
                Backend::TorchScript(Script::load(path, &bytes, device, precision)?),
                config.channels_last,
                match precision {
                    Precision::Fp32 => Kind::Float,
                    Precision::Bf16 => Kind::BFloat16,
                },
            ),
            Format::Aoti => {
                let compiled = spec.precision().unwrap_or_default();
                if precision == Precision::Bf16 && compiled != FilePrecision::Bf16 {
                    return Err(Error::config(
                        "precision",
                        format!(
                            "{} is an AOTInductor package compiled in {compiled}, and a \
                             package's precision is fixed when it is compiled: export a bf16 \
                             one with export_model(..., format=\"aoti\", precision=\"bf16\")",
                            path.display()
                        ),
                    ));
                }
                // Every method an output may come from (a lowered version-1 spec's
                // `featurize.method` is its `features` output's).
                let mut methods: Vec<&str> = Vec::new();
                for m in general.outputs.iter().filter_map(|o| general.method_of(o)) {
                    if !methods.contains(&m) {
                        methods.push(m);
                    }
                }
                // From the bytes that were read (and checked against a pin), never the path
                // again: aoti.rs extracts them into a private folder for the loader.
                let package = Package::load(path, &bytes, device, &methods, spec.cpu())?;
                (Backend::Aoti(package), false, Kind::Float)
            }
        };
        Ok(Model {
            path: path.to_path_buf(),
            preprocessor: match &spec {
                Spec::Image(s) => Some(Preprocessor::new(s)),
                Spec::General(_) => None,
            },
            general,
            tokenizers,
            spec,
            backend,
            device,
            precision,
            channels_last,
            input_kind,
        })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The spec in its general form (version 1 as one image input and one `output` vector).
    pub fn general(&self) -> &GeneralSpec {
        &self.general
    }

    /// Whether every tokenizer file is still the one loaded (as [`FileId`] tells a model
    /// file): a tokenizer replaced beside an unchanged spec without a `tokenizer_sha256` pin
    /// still reloads the model.
    fn tokenizers_unchanged(&self) -> bool {
        self.tokenizers.iter().flatten().all(|t| {
            std::fs::metadata(t.file())
                .is_ok_and(|now| FileId::of(&now) == FileId::of(t.metadata()))
        })
    }

    /// The tokenizer of the `text` input named `input`; `None` for another kind or name.
    pub fn tokenizer(&self, input: &str) -> Option<&TextTokenizer> {
        self.general
            .inputs
            .iter()
            .zip(&self.tokenizers)
            .find(|(d, _)| d.name == input)
            .and_then(|(_, t)| t.as_deref())
    }

    /// A version-1 (image) spec; a version-2 spec is an error naming the spec file.
    pub fn image_spec(&self) -> Result<&ModelSpec> {
        match &self.spec {
            Spec::Image(s) => Ok(s),
            Spec::General(_) => Err(self.not_an_image_model()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A version-1 spec's preprocessing; a version-2 spec is an error.
    pub fn preprocessor(&self) -> Result<&Preprocessor> {
        self.preprocessor
            .as_ref()
            .ok_or_else(|| self.not_an_image_model())
    }

    fn not_an_image_model(&self) -> Error {
        Error::Spec {
            path: ModelSpec::default_path(&self.path),
            reason: "this is a general model (spec_version 2): run it with TorchModel \
                     (NativeModel.predict in Python), not ImageScorer or ImageFeaturizer"
                .into(),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The file's format (TorchScript or AOTInductor package).
    pub fn format(&self) -> Format {
        match self.backend {
            Backend::TorchScript(_) => Format::TorchScript,
            Backend::Aoti(_) => Format::Aoti,
        }
    }

    /// Runs `n` preprocessed rows (`input.len() == n * row_len`) and returns `n * width` floats
    /// and `width`.
    pub fn run(
        &self,
        input: &[f32],
        n: usize,
        num_threads: usize,
        target: Target,
    ) -> Result<(Vec<f32>, usize)> {
        let image = self.image_spec()?;
        let spec = &image.input;
        let fail = |reason: String| Error::Inference {
            path: self.path.clone(),
            reason,
        };
        crate::sys::set_threads(num_threads);
        let _no_grad = tch::no_grad_guard();
        let x = Tensor::f_from_slice(input)
            .and_then(|t| {
                t.f_view([
                    n as i64,
                    spec.channels as i64,
                    spec.height as i64,
                    spec.width as i64,
                ])
            })
            .and_then(|t| {
                // NHWC strides under the NCHW shape: what torch calls channels_last.
                if self.channels_last {
                    t.f_permute([0, 2, 3, 1])?
                        .f_contiguous()?
                        .f_permute([0, 3, 1, 2])
                } else {
                    Ok(t)
                }
            })
            .and_then(|t| t.f_to_device(self.device))
            .and_then(|t| {
                if self.input_kind == Kind::Float {
                    Ok(t)
                } else {
                    t.f_to_kind(self.input_kind)
                }
            })
            .map_err(|e| fail(first_line(&e.to_string())))?;
        let source = match target {
            Target::Probabilities => None,
            Target::Features => Some(self.feature_source().map_err(&fail)?),
        };
        let output = match &source {
            None => Output::Forward(0),
            Some(FeatureSource::Method(m)) => Output::Method(m),
            Some(FeatureSource::OutputIndex(i)) => Output::Forward(*i),
        };
        let out = self.backend.run(x, &output).map_err(&fail)?;
        let out = match (target, image.output) {
            (Target::Probabilities, OutputKind::Logits) => out.f_softmax(-1, Kind::Float),
            _ => out.f_to_kind(Kind::Float),
        }
        .map_err(|e| fail(first_line(&e.to_string())))?;
        let shape = out.size();
        if shape.first() != Some(&(n as i64))
            || (target == Target::Probabilities && shape.len() != 2)
        {
            return Err(fail(format!(
                "output has shape {shape:?}; expected [{n}, {}]",
                if target == Target::Probabilities {
                    "classes"
                } else {
                    "..."
                }
            )));
        }
        let width = out.numel().checked_div(n).unwrap_or(0);
        let flat = out
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .and_then(|t| t.f_view([-1]))
            .and_then(|t| Vec::<f32>::try_from(&t))
            .map_err(|e| fail(first_line(&e.to_string())))?;
        if target == Target::Probabilities
            && let Some(labels) = &image.labels
            && labels.len() != width
        {
            return Err(Error::Spec {
                path: ModelSpec::default_path(&self.path),
                reason: format!(
                    "labels has {} entries but the model outputs {width} classes",
                    labels.len()
                ),
            });
        }
        Ok((flat, width))
    }

    /// The forward pass, the only one: `inputs` in the spec's order (already in the dtype each
    /// input declares), under no_grad with `num_threads` intra-op threads; calls `method` when
    /// given (the selected outputs' method: [`GeneralSpec::method_of`]). A TorchScript model
    /// gets every image input (4-D float) NHWC-strided when `channels_last` is on (oneDNN's
    /// convolutions are faster on it; the same layout on every surface). Float inputs are cast
    /// to bf16 for a TorchScript model loaded in bf16, and bf16/half outputs come back as
    /// float32 (float64 ones as they are).
    ///
    /// Errors: [`Error::Inference`] with libtorch's first line (a wrong shape or dtype, a
    /// missing method, an input kind the backend cannot take).
    pub fn forward(
        &self,
        inputs: Vec<ModelInput>,
        method: Option<&str>,
        num_threads: usize,
    ) -> Result<Value> {
        let fail = |reason: String| Error::Inference {
            path: self.path.clone(),
            reason,
        };
        crate::sys::set_threads(num_threads);
        let _no_grad = tch::no_grad_guard();
        let nhwc = |i: usize, t: &Tensor| {
            self.channels_last
                && self.general.inputs.get(i).map(|d| d.kind) == Some(InputKind::Image)
                && t.dim() == 4
                && t.is_floating_point()
        };
        let prepare = |i: usize, t: Tensor| -> std::result::Result<Tensor, tch::TchError> {
            // NHWC strides under the NCHW shape: what torch calls channels_last.
            let t = if nhwc(i, &t) {
                t.f_permute([0, 2, 3, 1])?
                    .f_contiguous()?
                    .f_permute([0, 3, 1, 2])?
            } else {
                t
            };
            let t = t.f_to_device(self.device)?;
            if self.input_kind != Kind::Float && t.is_floating_point() {
                t.f_to_kind(self.input_kind)
            } else {
                Ok(t)
            }
        };
        let inputs = inputs
            .into_iter()
            .enumerate()
            .map(|(i, x)| match x {
                ModelInput::Batch(t) => prepare(i, t).map(ModelInput::Batch),
                ModelInput::List(ts) => ts
                    .into_iter()
                    .map(|t| prepare(i, t))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(ModelInput::List),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| fail(first_line(&e.to_string())))?;
        let out = match &self.backend {
            Backend::TorchScript(script) => script.call(inputs, method),
            Backend::Aoti(package) => {
                let tensors = inputs
                    .into_iter()
                    .map(|x| match x {
                        ModelInput::Batch(t) => Ok(t),
                        ModelInput::List(_) => Err(
                            "an AOTInductor package takes batched tensors, not List[Tensor] \
                             (ragged: \"list\"): export the model as TorchScript"
                                .to_string(),
                        ),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(&fail)?;
                package
                    .run_many(&tensors, method)
                    .map(|ts| Value::List(ts.into_iter().map(Value::Tensor).collect()))
            }
        }
        .map_err(&fail)?;
        to_cpu_float(out).map_err(|e| fail(first_line(&e.to_string())))
    }

    fn feature_source(&self) -> std::result::Result<FeatureSource, String> {
        let Spec::Image(image) = &self.spec else {
            return Err("a general model has no `featurize` entry".into());
        };
        match &image.featurize {
            None => Err("the spec has no `featurize` entry, so this model cannot featurize".into()),
            Some(f) => f.source(),
        }
    }
}

/// Which of the network's outputs a forward pass returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output<'a> {
    /// Element `N` of forward's outputs (0 for a single tensor).
    Forward(usize),
    /// A featurize method (TorchScript) or the package's model of that name (AOTInductor).
    Method(&'a str),
}

/// How a model file is run. The batch code sees only [`Model::run`]; each backend turns an
/// NCHW float batch (already in the layout and dtype the model was loaded for) into a tensor.
#[derive(Debug)]
enum Backend {
    TorchScript(Script),
    Aoti(Package),
}

impl Backend {
    fn run(&self, x: Tensor, output: &Output<'_>) -> std::result::Result<Tensor, String> {
        match self {
            Backend::TorchScript(script) => script.forward(x, output),
            Backend::Aoti(package) => {
                let (method, index) = match output {
                    Output::Forward(i) => (None, *i),
                    Output::Method(m) => (Some(*m), 0),
                };
                let outputs = package.run(&x, method)?;
                let len = outputs.len();
                outputs.into_iter().nth(index).ok_or_else(|| {
                    format!(
                        "output_index {index} is out of range: the package returns {len} outputs"
                    )
                })
            }
        }
    }
}

/// Moves every tensor of `v` to the CPU; bf16 and half tensors become float32 (float64 stays:
/// rounding a float64 model's output through float32 would lose its digits).
fn to_cpu_float(v: Value) -> std::result::Result<Value, tch::TchError> {
    Ok(match v {
        Value::Tensor(t) => {
            let t = t.f_to_device(Device::Cpu)?;
            let wide = matches!(t.kind(), Kind::Float | Kind::Double);
            Value::Tensor(if t.is_floating_point() && !wide {
                t.f_to_kind(Kind::Float)?
            } else {
                t
            })
        }
        Value::List(items) => Value::List(
            items
                .into_iter()
                .map(to_cpu_float)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Value::Dict(items) => Value::Dict(
            items
                .into_iter()
                .map(|(k, v)| to_cpu_float(v).map(|v| (k, v)))
                .collect::<std::result::Result<_, _>>()?,
        ),
        other => other,
    })
}

/// libtorch messages carry a C++ backtrace after the first line; callers want the reason.
/// The reason in a libtorch message, without its C++ backtrace. TorchScript load errors start
/// with a bare "Internal torch error:" line and give the reason on the next one; errors raised
/// inside a scripted model start with "The following operation failed in the TorchScript
/// interpreter." and end with the Python-style exception line ("RuntimeError: mat1 and mat2
/// must have the same dtype..."), which is the reason.
fn first_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let first = lines.first().copied().unwrap_or(s.trim());
    if s.contains("The following operation failed in the TorchScript interpreter")
        && let Some(reason) = lines.iter().rev().find(|l| {
            l.split_once(':')
                .is_some_and(|(kind, _)| kind.ends_with("Error") && !kind.contains(' '))
        })
    {
        return reason.to_string();
    }
    match (first.trim_end_matches(':'), lines.get(1)) {
        ("Internal torch error" | "Internal torch error -", Some(next)) => {
            if next.starts_with("The following operation failed") {
                // The interpreter's header without an exception line: say what there is.
                lines.last().copied().unwrap_or(next).to_string()
            } else {
                next.to_string()
            }
        }
        _ => first.to_string(),
    }
}

static INTEROP: Once = Once::new();

/// Called by [`crate::sys`] before the first forward pass of the process.
pub(crate) fn init_interop_once() {
    INTEROP.call_once(|| {
        // Fails (and tch panics) if the pool was already started, e.g. by torch in the same
        // Python process; then it is already set and there is nothing to do.
        let _ = std::panic::catch_unwind(|| {
            if tch::get_num_interop_threads() != 1 {
                tch::set_num_interop_threads(1);
            }
        });
    });
}

#[cfg(test)]
mod first_line_tests {
    use super::first_line;

    #[test]
    fn keeps_the_reason_of_load_and_interpreter_errors() {
        let load = "Internal torch error:\nUnknown builtin op: torchvision::roi_align.\nHere are some suggestions";
        assert_eq!(
            first_line(load),
            "Unknown builtin op: torchvision::roi_align."
        );
        let run = "Internal torch error:\nThe following operation failed in the TorchScript interpreter.\n\
                   Traceback of TorchScript (most recent call last):\n  File \"<string>\", line 3\n\
                   RuntimeError: mat1 and mat2 must have the same dtype, but got Double and Float\n";
        assert_eq!(
            first_line(run),
            "RuntimeError: mat1 and mat2 must have the same dtype, but got Double and Float"
        );
        assert_eq!(first_line("shape mismatch\n frame #0"), "shape mismatch");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/out")
            .join(name)
    }

    #[test]
    fn a_load_that_panics_is_a_model_load_error_naming_the_file() {
        let err = load_or_error::<()>(Path::new("/m/x.pt"), "TorchScript model", || {
            panic!("tch wrapper failed")
        })
        .unwrap_err();
        assert!(matches!(err, Error::ModelLoad { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("/m/x.pt"), "{message}");
        assert!(
            message.contains("the loader panicked: tch wrapper failed"),
            "{message}"
        );
    }

    /// A thread that panicked holding the registry's or a slot's lock (as a panicking load
    /// did, before loads were caught) leaves both usable: the next open loads.
    #[test]
    fn opens_work_after_a_panic_poisoned_the_registry_and_the_slot() {
        let config = ModelConfig::new(fixture("resnet20.pt"));
        get_or_load(&config).unwrap();
        let slot = REGISTRY
            .lock()
            .unwrap()
            .iter()
            .find(|(key, _)| key.0.ends_with("resnet20.pt"))
            .unwrap()
            .1
            .clone();
        let poisoned = std::thread::spawn(move || {
            let _registry = REGISTRY.lock().unwrap();
            let _slot = slot.lock().unwrap();
            panic!("a load panicked here");
        })
        .join();
        assert!(poisoned.is_err());
        assert!(REGISTRY.is_poisoned());
        get_or_load(&config).unwrap();
    }
}
