//! Presets: named selections of a spec's outputs, so that "score", "featurize", "predict" and
//! "embed" are one general path with different outputs (docs/internals.md, the call protocol).
//!
//! | preset | version 1 (lowered) | version 2 |
//! |---|---|---|
//! | `score` | `prediction`, `probability`, `predicted_label`, `top_k` | refused (no class outputs are implied) |
//! | `featurize` | `features` (needs `featurize` in the spec) | refused |
//! | `predict` | `output` | every declared output |
//! | `embed` | refused | the one `vector` output |
//!
//! A caller may instead name the outputs (`"outputs": ["a", "b"]`, in that order). The outputs
//! of one call come from one method: one preset is one forward pass.

use super::general::{ColumnKind, GeneralSpec, V1_FEATURES, V1_OUTPUT};

/// The preset names, in the order of the FFI's op codes (0 score, 1 featurize, 2 predict).
pub const PRESETS: [&str; 4] = ["score", "featurize", "predict", "embed"];

/// Why a selection is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectError {
    /// The spec cannot give this preset (a spec error, naming what to add).
    Spec(String),
    /// The caller's selection is wrong (an unknown name, two methods).
    Config(String),
}

impl GeneralSpec {
    /// The indices into `outputs` of `preset`'s outputs, in column order.
    pub fn preset(&self, preset: &str) -> Result<Vec<usize>, SelectError> {
        let by_names = |names: &[&str]| -> Vec<usize> {
            names
                .iter()
                .filter_map(|n| self.outputs.iter().position(|o| o.name == *n))
                .collect()
        };
        match (preset, self.lowered_from_v1) {
            ("score", true) => Ok(by_names(&[
                "prediction",
                "probability",
                "predicted_label",
                "top_k",
            ])),
            ("featurize", true) => {
                let f = by_names(&[V1_FEATURES]);
                if f.is_empty() {
                    Err(SelectError::Spec(
                        "no `featurize` entry: add {\"method\": NAME} or {\"output_index\": N}"
                            .into(),
                    ))
                } else {
                    Ok(f)
                }
            }
            ("predict", true) => Ok(by_names(&[V1_OUTPUT])),
            ("predict", false) => Ok((0..self.outputs.len()).collect()),
            ("score" | "featurize", false) => Err(SelectError::Spec(
                "this is a general model (spec_version 2): run it with TorchModel \
                 (NativeModel.predict in Python), not ImageScorer or ImageFeaturizer"
                    .into(),
            )),
            ("embed", false) => {
                let vectors: Vec<usize> = self
                    .outputs
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.column == ColumnKind::Vector)
                    .map(|(i, _)| i)
                    .collect();
                match vectors[..] {
                    [one] => Ok(vec![one]),
                    _ => Err(SelectError::Spec(format!(
                        "the `embed` preset needs exactly one `vector` output; the spec has {}",
                        vectors.len()
                    ))),
                }
            }
            ("embed", true) => Err(SelectError::Spec(
                "a version-1 image spec has no `embed` preset: use `featurize`".into(),
            )),
            (other, _) => Err(SelectError::Config(format!(
                "preset `{other}` is not one of {}",
                PRESETS.join(", ")
            ))),
        }
    }

    /// The outputs a call selects: `outputs` by name (in that order) or else `preset`'s; then
    /// checks that they come from one method.
    pub fn select(
        &self,
        preset: &str,
        outputs: Option<&[String]>,
    ) -> Result<Vec<usize>, SelectError> {
        let selected = match outputs {
            None => self.preset(preset)?,
            Some([]) => {
                return Err(SelectError::Config(
                    "outputs: name at least one output".into(),
                ));
            }
            Some(names) => {
                let mut picked = Vec::with_capacity(names.len());
                for n in names {
                    let Some(i) = self.outputs.iter().position(|o| &o.name == n) else {
                        return Err(SelectError::Config(format!(
                            "outputs: no output is named `{n}` (the spec's outputs: {})",
                            self.outputs
                                .iter()
                                .map(|o| o.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    };
                    if picked.contains(&i) {
                        return Err(SelectError::Config(format!(
                            "outputs: `{n}` is named twice"
                        )));
                    }
                    picked.push(i);
                }
                picked
            }
        };
        if let Some(&first) = selected.first() {
            let method = self.method_of(&self.outputs[first]);
            if let Some(&other) = selected
                .iter()
                .find(|&&i| self.method_of(&self.outputs[i]) != method)
            {
                let name = |m: Option<&str>| m.map_or("forward".to_string(), |m| format!("`{m}`"));
                return Err(SelectError::Config(format!(
                    "outputs `{}` ({}) and `{}` ({}) come from different methods: one call runs \
                     one forward pass, so select them in separate calls",
                    self.outputs[first].name,
                    name(method),
                    self.outputs[other].name,
                    name(self.method_of(&self.outputs[other]))
                )));
            }
        }
        Ok(selected)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::spec::Spec;

    fn lowered(featurize: &str) -> GeneralSpec {
        let text = format!(
            r#"{{"input": {{"height": 4, "width": 4}}, "labels": ["a", "b"], "output": "logits"
                {featurize}}}"#
        );
        Spec::from_json(&text).unwrap().general()
    }

    fn names(g: &GeneralSpec, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| g.outputs[i].name.clone()).collect()
    }

    #[test]
    fn version_one_presets_are_its_calls() {
        let g = lowered(r#", "featurize": {"method": "embed"}"#);
        g.validate().unwrap();
        assert_eq!(
            names(&g, &g.preset("score").unwrap()),
            ["prediction", "probability", "predicted_label", "top_k"]
        );
        assert_eq!(names(&g, &g.preset("predict").unwrap()), ["output"]);
        assert_eq!(names(&g, &g.preset("featurize").unwrap()), ["features"]);
        // features come from `embed`, the class outputs from forward: never together.
        let both = ["features".to_string(), "probability".to_string()];
        let e = g.select("predict", Some(&both)).unwrap_err();
        assert!(
            matches!(&e, SelectError::Config(m) if m.contains("different methods")
                && m.contains("`embed`") && m.contains("forward")),
            "{e:?}"
        );
        let e = lowered("").preset("featurize").unwrap_err();
        assert!(matches!(e, SelectError::Spec(m) if m.contains("no `featurize` entry")));
        let e = g.preset("classify").unwrap_err();
        assert!(matches!(e, SelectError::Config(m) if m.contains("score, featurize")));
    }

    #[test]
    fn named_outputs_keep_the_callers_order_and_unknown_names_are_listed() {
        let g = lowered("");
        let pick = ["top_k".to_string(), "prediction".to_string()];
        assert_eq!(
            names(&g, &g.select("predict", Some(&pick)).unwrap()),
            ["top_k", "prediction"]
        );
        let e = g
            .select("predict", Some(&["nope".to_string()]))
            .unwrap_err();
        assert!(matches!(e, SelectError::Config(m) if m.contains("`nope`") && m.contains("top_k")));
    }
}
