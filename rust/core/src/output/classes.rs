//! The class writers: `prediction` (float64), `label` (utf8) and `top_k`
//! (`list<struct<index int32, label utf8, probability float32>>`), one value per row from a
//! per-row class vector `[K]` after `post` (a version-1 spec's softmax). The vector is read as
//! float32 and ranked best first, ties to the lower index (as argmax), so a version-1 spec
//! gives exactly what its image path gave.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{
    ArrayBuilder, Float32Builder, Float64Builder, Int32Builder, ListBuilder, StringBuilder,
    StructBuilder,
};
use arrow_schema::{DataType, Field, Fields};
use tch::{Kind, Tensor};

use super::tensor::{batch_tensor, returned};
use super::{OutputWriter, post};
use crate::spec::general::{ColumnKind, OutputDecl, PostOp};
use crate::value::Value;

/// The struct fields of a `top_k` entry.
pub fn top_k_fields() -> Fields {
    Fields::from(vec![
        Field::new("index", DataType::Int32, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("probability", DataType::Float32, false),
    ])
}

/// The Arrow type of a class column.
pub(crate) fn class_type(column: ColumnKind) -> DataType {
    match column {
        ColumnKind::Prediction => DataType::Float64,
        ColumnKind::Label => DataType::Utf8,
        _ => DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(top_k_fields()),
            true,
        ))),
    }
}

enum Builder {
    Prediction(Float64Builder),
    Label(StringBuilder),
    TopK(ListBuilder<StructBuilder>),
}

/// A `prediction`, `label` or `top_k` column.
pub struct ClassWriter {
    name: String,
    post: Vec<PostOp>,
    labels: Option<Vec<String>>,
    /// The call's `top_k` (capped at the class count per chunk).
    k: usize,
    expected: Option<i64>,
    out: Builder,
}

impl ClassWriter {
    pub fn new(decl: &OutputDecl, top_k: usize) -> ClassWriter {
        let out = match decl.column {
            ColumnKind::Prediction => Builder::Prediction(Float64Builder::new()),
            ColumnKind::Label => Builder::Label(StringBuilder::new()),
            _ => Builder::TopK(ListBuilder::new(StructBuilder::from_fields(
                top_k_fields(),
                0,
            ))),
        };
        ClassWriter {
            name: decl.name.clone(),
            post: decl.post.clone(),
            labels: decl.labels.clone(),
            k: top_k,
            expected: decl.shape.as_ref().and_then(|s| s.first().copied()),
            out,
        }
    }

    fn append_null(&mut self) {
        match &mut self.out {
            Builder::Prediction(b) => b.append_null(),
            Builder::Label(b) => b.append_null(),
            Builder::TopK(b) => b.append(false),
        }
    }
}

/// Indices of the `k` largest values, best first; ties keep the lower index (like argmax).
fn ranking(p: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

fn struct_field<T: ArrayBuilder>(b: &mut StructBuilder, i: usize) -> Result<&mut T, String> {
    b.field_builder::<T>(i)
        .ok_or_else(|| format!("top_k builder field {i} has another type"))
}

impl OutputWriter for ClassWriter {
    fn append_chunk(
        &mut self,
        value: Option<&Value>,
        good: &[bool],
        masks: &HashMap<String, Tensor>,
    ) -> Result<(), String> {
        let count = good.iter().filter(|&&g| g).count();
        let Some(value) = value else {
            if count > 0 {
                return Err(format!("no output for the {count} rows that ran"));
            }
            good.iter().for_each(|_| self.append_null());
            return Ok(());
        };
        let declared = "a class vector [K] per row";
        let t = batch_tensor(value, count, declared)?;
        let p = post::apply(t, &self.post, masks)?;
        let size = p.size();
        let classes = match size[..] {
            [_, k] if self.expected.is_none_or(|e| e == -1 || e == k) => k as usize,
            _ => {
                return Err(format!(
                    "declared {declared}, the model returned {}",
                    returned(&t.size(), Some(&size), &self.post)
                ));
            }
        };
        if let Some(labels) = &self.labels
            && labels.len() != classes
        {
            return Err(format!(
                "labels has {} entries but the model outputs {classes} classes",
                labels.len()
            ));
        }
        let mut values = vec![0f32; count * classes];
        p.f_to_kind(Kind::Float)
            .and_then(|f| f.f_copy_data(&mut values, count * classes))
            .map_err(|e| format!("output `{}`: copying the class vector: {e}", self.name))?;
        // `top_k` past the class count gives every class: the caller's number never sizes memory.
        let k = self.k.min(classes);
        let mut rows = values.chunks_exact(classes.max(1));
        let labels = self.labels.as_deref();
        for &g in good {
            let row = if g { rows.next() } else { None };
            let Some(row) = row else {
                match &mut self.out {
                    Builder::Prediction(b) => b.append_null(),
                    Builder::Label(b) => b.append_null(),
                    Builder::TopK(b) => b.append(false),
                }
                continue;
            };
            match &mut self.out {
                Builder::Prediction(b) => {
                    b.append_value(ranking(row, 1).first().copied().unwrap_or(0) as f64)
                }
                Builder::Label(b) => {
                    let best = ranking(row, 1).first().copied().unwrap_or(0);
                    b.append_option(labels.and_then(|l| l.get(best)))
                }
                Builder::TopK(b) => {
                    let entries = b.values();
                    for i in ranking(row, k) {
                        struct_field::<Int32Builder>(entries, 0)?.append_value(i as i32);
                        struct_field::<StringBuilder>(entries, 1)?
                            .append_option(labels.and_then(|l| l.get(i)));
                        struct_field::<Float32Builder>(entries, 2)?.append_value(row[i]);
                        entries.append(true);
                    }
                    b.append(true);
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match &mut self.out {
            Builder::Prediction(b) => Arc::new(b.finish()),
            Builder::Label(b) => Arc::new(b.finish()),
            Builder::TopK(b) => Arc::new(b.finish()),
        }
    }
}
