//! `structs` columns: a per-row list of dicts of tensors, the first dimension of each the
//! row's entry count K (torchvision's detection models: `boxes [K, 4]`, `labels [K]`,
//! `scores [K]`), written as `array<struct<fields>>`, one struct per entry.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::NullBufferBuilder;
use arrow_array::{ArrayRef, StructArray};
use arrow_schema::Fields;
use tch::Tensor;

use super::tensor::{Buf, Level};
use super::{OutputWriter, shape_text, struct_fields};
use crate::spec::general::{FieldDecl, OutputDecl};
use crate::value::Value;

/// A `structs` column: per chunk a list of one dict per row that ran; each declared field
/// reads its key, all with the same entry count K.
pub struct StructsWriter {
    fields: Vec<FieldDecl>,
    arrow_fields: Fields,
    values: Vec<Buf>,
    /// Per field: the entries' lists for an `[N]` field, `None` for a scalar one.
    inner: Vec<Option<Level>>,
    /// Entries per row.
    rows: Level,
    valid: NullBufferBuilder,
}

impl StructsWriter {
    pub fn new(decl: &OutputDecl) -> StructsWriter {
        StructsWriter {
            fields: decl.fields.clone(),
            arrow_fields: struct_fields(&decl.fields),
            values: decl.fields.iter().map(|f| Buf::new(f.dtype())).collect(),
            inner: decl
                .fields
                .iter()
                .map(|f| (!f.shape.is_empty()).then(Level::new))
                .collect(),
            rows: Level::new(),
            valid: NullBufferBuilder::new(0),
        }
    }

    /// Each field's tensor in one row's dict, checked: every key there, K entries in each,
    /// an `[N]` field `[K, N]`, a scalar field `[K]` (or `[K, 1]`).
    fn row_tensors<'v>(
        &self,
        i: usize,
        row: &'v Value,
    ) -> Result<(usize, Vec<&'v Tensor>), String> {
        let Value::Dict(entries) = row else {
            return Err(format!(
                "result {i}: declared a dict per row (structs), the model returned {}",
                row.describe()
            ));
        };
        let mut tensors = Vec::with_capacity(self.fields.len());
        let mut k: Option<(i64, &str)> = None;
        for f in &self.fields {
            let key = f.key();
            let Some((_, v)) = entries.iter().find(|(name, _)| name == key) else {
                return Err(format!(
                    "result {i}: row dict has no key `{key}` (keys: {})",
                    entries
                        .iter()
                        .map(|(name, _)| name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            let Value::Tensor(t) = v else {
                return Err(format!(
                    "result {i}: field `{}` (key `{key}`): declared a tensor, the model returned {}",
                    f.name,
                    v.describe()
                ));
            };
            let size = t.size();
            let (rows, ok) = match (&f.shape[..], &size[..]) {
                ([], [k]) | ([], [k, 1]) => (*k, true),
                ([n], [k, m]) => (*k, *n == -1 || n == m),
                (_, s) => (s.first().copied().unwrap_or(-1), false),
            };
            let declared = match &f.shape[..] {
                [] => "[K] (one value per entry)".to_string(),
                [n] => format!("[K, {}]", if *n == -1 { "N".into() } else { n.to_string() }),
                s => shape_text(s),
            };
            if !ok {
                return Err(format!(
                    "result {i}: field `{}` (key `{key}`): declared {declared}, the model \
                     returned a tensor {}",
                    f.name,
                    shape_text(&size)
                ));
            }
            match k {
                Some((k0, first)) if k0 != rows => {
                    return Err(format!(
                        "result {i}: key `{key}` has {rows} entries (a tensor {}), but key \
                         `{first}` has {k0}",
                        shape_text(&size)
                    ));
                }
                None => k = Some((rows, key)),
                _ => {}
            }
            tensors.push(t);
        }
        Ok((k.map_or(0, |(k, _)| k as usize), tensors))
    }
}

impl OutputWriter for StructsWriter {
    fn append_chunk(
        &mut self,
        value: Option<&Value>,
        good: &[bool],
        _masks: &HashMap<String, Tensor>,
    ) -> Result<(), String> {
        let count = good.iter().filter(|&&g| g).count();
        let Some(value) = value else {
            if count > 0 {
                return Err(format!("no output for the {count} rows that ran"));
            }
            (0..good.len()).for_each(|_| self.rows.push(0));
            self.valid.append_n_nulls(good.len());
            return Ok(());
        };
        let items = match value {
            Value::List(items) if items.len() == count => items,
            Value::List(items) => {
                return Err(format!(
                    "the model returned a list of {} per-row results for {count} rows",
                    items.len()
                ));
            }
            other => {
                return Err(format!(
                    "declared a list of per-row dicts (structs), the model returned {}",
                    other.describe()
                ));
            }
        };
        // Check every row before appending any, so that a bad chunk leaves nothing behind.
        let rows = items
            .iter()
            .enumerate()
            .map(|(i, row)| self.row_tensors(i, row))
            .collect::<Result<Vec<_>, String>>()?;
        let entries: usize = rows.iter().map(|(k, _)| k).sum();
        self.rows.check(entries)?;
        let mut rows = rows.into_iter();
        for &g in good {
            self.valid.append(g);
            let Some((k, tensors)) = g.then(|| rows.next()).flatten() else {
                self.rows.push(0);
                continue;
            };
            self.rows.push(k);
            for (j, t) in tensors.into_iter().enumerate() {
                let f = &self.fields[j];
                self.values[j]
                    .extend(t, f.dtype())
                    .map_err(|e| format!("field `{}`: {e}", f.name))?;
                if let Some(level) = &mut self.inner[j] {
                    let n = t.size().get(1).copied().unwrap_or(0) as usize;
                    level.check(k * n)?;
                    (0..k).for_each(|_| level.push(n));
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let mut columns = Vec::with_capacity(self.fields.len());
        for (values, inner) in self.values.iter_mut().zip(self.inner.iter_mut()) {
            let array = values.take_array(&mut NullBufferBuilder::new(0));
            columns.push(match inner {
                Some(level) => level.take_list(array, &mut NullBufferBuilder::new(0)),
                None => array,
            });
        }
        // Every field holds one value (or list) per entry: built so above.
        let entries = StructArray::new(self.arrow_fields.clone(), columns, None);
        self.rows.take_list(Arc::new(entries), &mut self.valid)
    }
}
