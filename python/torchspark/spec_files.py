"""Where a model's files are, by torchspark's rules: the spec beside a model and the tokenizer
files a spec names. Pure path and spec rules, no Spark and no I/O, so that every module can use
them (cluster, native_model, mlflow) without importing one another."""

from __future__ import annotations


def spec_path(model_path: str) -> str:
    """The spec beside a model, `model.pt` -> `model.json`: the path's last name (trailing `/`
    ignored) loses its extension, from its last `.` unless that `.` starts the name (`.pt` ->
    `.pt.json`), and gains `.json`. The native loader and the JVM apply the same rule (one
    table, tests/fixtures/spec_paths.json, pins all three)."""
    path = model_path.rstrip("/")
    name = path.rfind("/") + 1
    dot = path.rfind(".")
    return (path[:dot] if dot > name else path) + ".json"


def tokenizer_name_problem(name: object) -> str | None:
    """Why `name` cannot be a spec's `tokenizer` (a file name in the spec's folder), or None:
    the native loader's rule (spec/general.rs), and the JVM's (ModelSource.tokenizersOf)."""
    if not isinstance(name, str) or not name:
        return "must name the tokenizer.json file beside the spec"
    if "/" in name or "\\" in name or ".." in name or name == ".":
        return (
            "must be a file name in the spec's folder (no `/` or `..`): the tokenizer ships "
            "with the model"
        )
    return None


def tokenizer_files(spec: dict, where: str = "") -> list[tuple[str, str, str | None]]:
    """(input name, tokenizer file name, sha256 pin or None) of each `text` input of a spec
    (spec version 2; the file is named relative to the spec's folder, docs/text.md).

    Raises ModelSpecError naming the spec (`where`) and the input when a `tokenizer` is not a
    plain file name beside the spec (`../x.json`, `/etc/x`, `sub/x.json`)."""
    from torchspark.errors import ModelSpecError

    out = []
    inputs = spec.get("inputs") if isinstance(spec, dict) else None
    for i, decl in enumerate(inputs if isinstance(inputs, list) else []):
        name = decl.get("tokenizer") if isinstance(decl, dict) else None
        if name is None:
            continue
        why = tokenizer_name_problem(name)
        if why:
            raise ModelSpecError(
                f"model spec {where or '(spec)'}: inputs[{i}].tokenizer `{name}` {why}"
            )
        if decl.get("kind") == "text":
            pin = decl.get("tokenizer_sha256")
            out.append((str(decl.get("name")), name, pin and str(pin)))
    return out
