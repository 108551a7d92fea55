//! The TorchScript backend: `.pt` files through tch's `CModule`.

use std::path::Path;

use tch::{CModule, Device, IValue, Kind};

use super::Precision;
use crate::error::{Error, Result};
use crate::value::{ModelInput, Value};

/// A loaded TorchScript module.
pub(crate) struct Script {
    // Sharing one CModule between threads is sound: `forward`/`method` on a TorchScript module
    // in eval mode under no_grad only reads its parameters, and libtorch's JIT executor guards its
    // lazily compiled plans with its own mutex (libtorch documents concurrent inference on one
    // module); we never call a `&mut` method after loading. tch marks CModule Send + Sync.
    module: CModule,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script")
    }
}

impl Script {
    pub(crate) fn load(
        path: &Path,
        bytes: &[u8],
        device: Device,
        precision: Precision,
    ) -> Result<Script> {
        let fail = |reason: String| Error::ModelLoad {
            path: path.to_path_buf(),
            format: super::Format::TorchScript.name(),
            reason,
        };
        let mut module = CModule::load_data_on_device(&mut &bytes[..], device)
            .map_err(|e| fail(super::first_line(&e.to_string())))?;
        module.set_eval();
        if precision == Precision::Bf16 {
            // `to` casts parameters and buffers. A frozen module has none: freezing inlines
            // the weights as graph constants, which no cast reaches, so its first forward would
            // fail on a dtype mismatch. Say so now, once, instead of on every batch.
            let has_params = module
                .named_parameters()
                .map(|p| !p.is_empty())
                .unwrap_or(false);
            if !has_params {
                return Err(Error::config(
                    "precision",
                    format!(
                        "bf16 casts the model's parameters, and {} has none: it was frozen \
                         (torch.jit.freeze inlines weights as constants). Export it with \
                         export_model(..., freeze=False) to score it in bf16, or as a bf16 \
                         AOTInductor package (format=\"aoti\", precision=\"bf16\")",
                        path.display()
                    ),
                ));
            }
            module.to(device, Kind::BFloat16, false);
        }
        Ok(Script { module })
    }
}

impl Script {
    /// Calls `forward` (or `method`) with one argument per input: a tensor, or `List[Tensor]`.
    pub(crate) fn call(
        &self,
        inputs: Vec<ModelInput>,
        method: Option<&str>,
    ) -> Result<Value, String> {
        let args: Vec<IValue> = inputs
            .into_iter()
            .map(|x| match x {
                ModelInput::Batch(t) => IValue::Tensor(t),
                ModelInput::List(ts) => IValue::TensorList(ts),
            })
            .collect();
        let out = match method {
            None => self.module.forward_is(&args),
            Some(m) => self.module.method_is(m, &args),
        }
        .map_err(|e| super::first_line(&e.to_string()))?;
        Ok(value(out))
    }
}

/// A returned `IValue` as a [`Value`] tree.
fn value(v: IValue) -> Value {
    match v {
        IValue::Tensor(t) => Value::Tensor(t),
        IValue::Double(x) => Value::Scalar(x),
        IValue::Int(x) => Value::Scalar(x as f64),
        IValue::Bool(b) => Value::Scalar(f64::from(u8::from(b))),
        IValue::Tuple(items) | IValue::GenericList(items) => {
            Value::List(items.into_iter().map(value).collect())
        }
        IValue::TensorList(ts) => Value::List(ts.into_iter().map(Value::Tensor).collect()),
        IValue::DoubleList(xs) => Value::List(xs.into_iter().map(Value::Scalar).collect()),
        IValue::IntList(xs) => {
            Value::List(xs.into_iter().map(|x| Value::Scalar(x as f64)).collect())
        }
        IValue::GenericDict(items) => {
            let mut entries = Vec::with_capacity(items.len());
            for (k, v) in items {
                match k {
                    IValue::String(k) => entries.push((k, value(v))),
                    other => {
                        return Value::Other(format!(
                            "a dict whose keys are {}, not strings",
                            ivalue_name(&other)
                        ));
                    }
                }
            }
            Value::Dict(entries)
        }
        other => Value::Other(ivalue_name(&other).to_string()),
    }
}

fn ivalue_name(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tensor(_) => "a tensor",
        IValue::Tuple(_) => "a tuple",
        IValue::GenericDict(_) => "a dict",
        IValue::String(_) => "a string",
        _ => "a non-tensor value",
    }
}
