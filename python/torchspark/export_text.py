"""Export a Hugging Face text encoder for torchspark: a frozen TorchScript `.pt` that returns the
token embeddings, a version-2 spec whose `post` ops pool and normalize them natively, and the
tokenizer file beside both (`out.pt`, `out.json`, `out.tokenizer.json`).

Offline only: every file is read from the folder given, nothing is downloaded. See
docs/design/text-models.md section 3.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchspark import cluster

FORMATS = ("torchscript",)
# `task`: what the folder's model gives. "text-classification": an
# AutoModelForSequenceClassification folder, its logits through the class writers.
TASKS = ("embedding", "text-classification")
# problem_type -> the post op Hugging Face's text-classification pipeline applies.
_ACTIVATIONS = {"single_label_classification": "softmax", "multi_label_classification": "sigmoid"}
POOLINGS = ("mean", "cls", "max")
# ST pooling modes torchspark has no post op for (refused by name).
_UNSUPPORTED_POOLING = ("mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken_tokens")
# verify=True: the batch's real lengths (tokens incl. specials), padded to the longest.
VERIFY_LENGTHS = (4, 17, 63)
# The trace's example: a padded batch, so no Python-int shape of one length is frozen in.
TRACE_LENGTHS = (9, 5)
TOLERANCE = 1e-5


class _Encoder(nn.Module):
    """`forward(input_ids [n, T] int64, attention_mask [n, T] int64[, token_type_ids [n, T]
    int64]) -> last_hidden_state [n, T, H] float32`: the model's token embeddings. A wrapper, as
    transformers 5 has no `torchscript` flag (its models return dataclasses)."""

    def __init__(self, model: nn.Module, with_mask: bool, with_type_ids: bool) -> None:
        super().__init__()
        self.model = model
        self.with_mask = with_mask
        self.with_type_ids = with_type_ids

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._run(input_ids, attention_mask, token_type_ids).last_hidden_state

    def _run(self, input_ids, attention_mask, token_type_ids):
        """The wrapped model's output for the inputs it takes (traced, never scripted)."""
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids}
        if self.with_mask:
            kwargs["attention_mask"] = attention_mask
        if self.with_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(**kwargs)


class _Classifier(_Encoder):
    """`forward(input_ids, attention_mask[, token_type_ids]) -> logits [n, K] float32`: a
    sequence classifier's scores before its activation (the spec's `post` applies it)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._run(input_ids, attention_mask, token_type_ids).logits


def export_text_model(
    source_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    format: str = "torchscript",
    max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    column: str = "text",
    output: str = "embedding",
    freeze: bool = True,
    verify: bool = True,
    task: str = "embedding",
) -> Path:
    """Export the text encoder in `source_dir` to `out_path`; returns the spec's path.

    `source_dir` is a sentence-transformers folder (`modules.json`: a Transformer, then a Pooling
    of mode mean, cls or max, then optionally Normalize) or a plain `transformers` folder
    (`config.json`, weights, and a fast tokenizer's `tokenizer.json`). Written beside
    `out_path` (`minilm.pt`):

    - `minilm.pt`: TorchScript, `forward(input_ids [n, T] int64, attention_mask [n, T] int64[,
      token_type_ids [n, T] int64]) -> last_hidden_state [n, T, H] float32` (the mask when the
      model's forward takes one; type ids when it also has `type_vocab_size > 0`). Traced on a
      padded batch, then frozen (`freeze=False` keeps the weights as parameters, as the runtime
      option `precision="bf16"` needs; integer buffers then become graph constants, which
      that cast leaves alone).
    - `minilm.json`: the spec (version 2): a `text` input `input_ids` reading `column` (the
      tokenizer file, `max_length`, `vocab_size`, `tokenizer_sha256`, `pad_value` = the
      tokenizer's pad id), the generated `attention_mask` / `token_type_ids`, and one `vector`
      output `output` of shape `[H]` with `post` = the pooling (`mean_pool`, `cls_pool`,
      `max_pool`) then `l2_normalize` if normalized; `sha256` of the `.pt`.
    - `minilm.tokenizer.json`: the source's `tokenizer.json` byte for byte (torchspark overrides
      its padding and truncation: none, and longest-first at `max_length`).

    Defaults come from the folder: `max_length` from `sentence_bert_config.json`'s
    `max_seq_length` (else the tokenizer's `model_max_length` capped by the config's
    `max_position_embeddings`); `pooling` from `1_Pooling/config.json` (plain folder: "mean");
    `normalize` from a Normalize module (plain folder: False). Passing them overrides.

    `verify=True` runs the eager model and the saved file on a batch of 3 rows of 4, 17 and 63
    tokens (capped at `max_length`) and requires the same shape and values within 1e-5.

    `task="text-classification"` exports an `AutoModelForSequenceClassification` folder
    (`config.json`'s `architectures` names a `...ForSequenceClassification`) instead: the `.pt`
    returns the logits `[n, K]`, and the spec's outputs are `prediction` (the class index),
    `probability` (a vector of K), `predicted_label` (from `id2label`), `top_k` and `logits`,
    through the activation Hugging Face's text-classification pipeline applies: softmax for
    `problem_type` `single_label_classification` (or unset with K > 1), sigmoid for
    `multi_label_classification` (or K = 1). `pooling`, `normalize` and `output` do not apply.
    See docs/text.md, TextClassifier.

    Raises ValueError (bad argument, unsupported module or pooling mode, named; a tokenizer
    larger than the model's vocabulary; a type id other than 0 for one sequence),
    FileNotFoundError (a missing file, named), RuntimeError (verify: shapes or values differ,
    the shapes named).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    classify = task == "text-classification"
    if classify and (pooling is not None or normalize is not None):
        raise ValueError("pooling and normalize apply to task='embedding' only")
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} or None, got {pooling!r}")
    src = Path(source_dir)
    if not (src / "config.json").is_file() and not (src / "modules.json").is_file():
        raise FileNotFoundError(f"{src}: neither modules.json nor config.json (not a model folder)")
    if classify and (src / "modules.json").is_file():
        raise ValueError(
            f"{src / 'modules.json'}: a sentence-transformers folder is an embedding model; "
            "task='text-classification' takes a transformers sequence-classification folder"
        )
    layout = _read_layout(src)
    if pooling is None:
        pooling = layout["pooling"]
    if normalize is None:
        normalize = layout["normalize"]
    model_dir: Path = layout["model_dir"]
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(
            f"{tok_file}: no tokenizer.json (torchspark needs a fast tokenizer)"
        )
    config = json.loads((model_dir / "config.json").read_text())
    tok_json = json.loads(tok_file.read_text(encoding="utf-8"))
    if layout["do_lower_case"] and not _lowercases(tok_json.get("normalizer")):
        raise ValueError(
            f"{layout['st_config']}: do_lower_case is true but {tok_file}'s normalizer does not "
            "lowercase (torchspark runs tokenizer.json only)"
        )
    if max_length is None:
        max_length = layout["max_length"] or _default_max_length(model_dir, config)
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    max_pos = config.get("max_position_embeddings")
    if isinstance(max_pos, int) and max_length > max_pos:
        raise ValueError(f"max_length {max_length} > the model's max_position_embeddings {max_pos}")

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tok_file))
    vocab_size = int(config["vocab_size"])
    tok_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if tok_vocab > vocab_size:
        raise ValueError(
            f"{tok_file}: {tok_vocab} tokens (added ones included) > the model's vocab_size "
            f"{vocab_size}"
        )
    pad_id = _pad_id(tok_json, tokenizer, model_dir, config)
    classes = _classes(model_dir, config) if classify else None

    if classify:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), local_files_only=True
        )
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()
    params = inspect.signature(model.forward).parameters
    with_mask = "attention_mask" in params
    if not with_mask:
        # The pooling post ops need the mask of real tokens.
        raise ValueError(f"{model_dir}: the model's forward takes no attention_mask")
    with_type_ids = "token_type_ids" in params and int(config.get("type_vocab_size") or 0) > 0
    if with_type_ids:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        probe = tokenizer.encode("a").type_ids
        if any(probe):
            raise ValueError(
                f"{tok_file}: one sequence gets type ids {probe} (torchspark generates zeros)"
            )
    if not freeze:
        _int_buffers_as_constants(model)
    encoder = (_Classifier if classify else _Encoder)(model, with_mask, with_type_ids).eval()
    hidden = int(config.get("hidden_size") or 0)

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    example = _batch(TRACE_LENGTHS, vocab_size, pad_id, with_mask, with_type_ids, gen)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python bool it meets; verify is the real check.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(encoder, example, check_trace=False, strict=False)
        if freeze:
            traced = torch.jit.freeze(traced.eval())
        hidden = hidden or int(encoder(*example).shape[-1])
    torch.jit.save(traced, str(out))

    if verify:
        lengths = tuple(min(n, max_length) for n in VERIFY_LENGTHS)
        batch = _batch(lengths, vocab_size, pad_id, with_mask, with_type_ids, gen)
        _verify(encoder, torch.jit.load(str(out)), batch, lengths)

    tok_out = out.with_name(out.stem + ".tokenizer.json")
    shutil.copyfile(tok_file, tok_out)
    if classes is not None:
        labels, activation = classes
        spec = _classifier_spec(
            _text_inputs(
                column=column,
                tokenizer=tok_out.name,
                max_length=max_length,
                vocab_size=vocab_size,
                tokenizer_sha256=_sha256(tok_out),
                pad_id=pad_id,
                with_mask=with_mask,
                with_type_ids=with_type_ids,
            ),
            labels,
            activation,
            _sha256(out),
        )
        spec_file = Path(cluster.spec_path(str(out)))
        spec_file.write_text(json.dumps(spec, indent=2) + "\n")
        return spec_file
    spec = _spec(
        column=column,
        output=output,
        tokenizer=tok_out.name,
        max_length=max_length,
        vocab_size=vocab_size,
        tokenizer_sha256=_sha256(tok_out),
        pad_id=pad_id,
        with_mask=with_mask,
        with_type_ids=with_type_ids,
        hidden=hidden,
        pooling=pooling,
        normalize=normalize,
        sha256=_sha256(out),
    )
    # Where every loader looks for it (one rule: torchspark.cluster.spec_path).
    spec_file = Path(cluster.spec_path(str(out)))
    spec_file.write_text(json.dumps(spec, indent=2) + "\n")
    return spec_file


def _int_buffers_as_constants(model: nn.Module) -> None:
    """Integer buffers (BERT's `position_ids`, `token_type_ids`) become plain attributes, which
    the trace keeps as graph constants, as freezing would: libtorch's `Module::to(bf16)` (the
    runtime option precision="bf16") casts every buffer, integer ones too, breaking lookups."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and not buf.is_floating_point():
                del module._buffers[name]
                object.__setattr__(module, name, buf)


def _read_layout(src: Path) -> dict[str, Any]:
    """The folder's modules: where the transformer is, its max length, pooling, normalize."""
    layout: dict[str, Any] = {
        "model_dir": src,
        "pooling": "mean",
        "normalize": False,
        "max_length": None,
        "do_lower_case": False,
        "st_config": None,
    }
    modules_file = src / "modules.json"
    if not modules_file.is_file():
        return layout
    modules = json.loads(modules_file.read_text())
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if not kinds or kinds[0] != "Transformer":
        raise ValueError(f"{modules_file}: the first module must be a Transformer, got {kinds}")
    pooling = None
    for m, kind in zip(modules[1:], kinds[1:]):
        if kind == "Pooling":
            if pooling is not None:
                raise ValueError(f"{modules_file}: more than one Pooling module")
            pooling = _st_pooling(src / m.get("path", "") / "config.json")
        elif kind == "Normalize":
            layout["normalize"] = True
        else:
            raise ValueError(
                f"{modules_file}: module {m.get('name')!r} of type {m.get('type')!r} is not "
                "supported (torchspark exports Transformer, Pooling, Normalize)"
            )
    if pooling is None:
        raise ValueError(f"{modules_file}: no Pooling module (a token-level model: use TorchModel)")
    layout["pooling"] = pooling
    model_dir = src / modules[0].get("path", "")
    layout["model_dir"] = model_dir
    for name in ("sentence_bert_config.json", "sentence_roberta_config.json"):
        cfg_file = model_dir / name
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
            layout["max_length"] = cfg.get("max_seq_length")
            layout["do_lower_case"] = bool(cfg.get("do_lower_case", False))
            layout["st_config"] = cfg_file
            break
    return layout


def _st_pooling(cfg_file: Path) -> str:
    """mean, cls or max from a sentence-transformers Pooling config (ST 2-5 booleans, or ST 6's
    `pooling_mode` string); anything else or a combination is refused by name."""
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: the Pooling module's config is missing")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("include_prompt") is False:
        raise ValueError(f"{cfg_file}: include_prompt false is not supported")
    if isinstance(cfg.get("pooling_mode"), str):
        modes = [cfg["pooling_mode"].removesuffix("_tokens").removesuffix("_token")]
    else:
        modes = [
            k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
            for k, v in cfg.items()
            if k.startswith("pooling_mode_") and v is True
        ]
    bad = [m for m in modes if m not in POOLINGS]
    if bad or len(modes) != 1:
        raise ValueError(
            f"{cfg_file}: pooling {modes} is not supported (torchspark pools with exactly one "
            f"of {POOLINGS}; not {', '.join(_UNSUPPORTED_POOLING)})"
        )
    return modes[0]


def _lowercases(normalizer: dict | None) -> bool:
    if not normalizer:
        return False
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase", True))
    if kind == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers", []))
    return False


def _default_max_length(model_dir: Path, config: dict) -> int:
    """The tokenizer's model_max_length (HF writes 1e30 when unset), capped by the positions."""
    limit = config.get("max_position_embeddings")
    tok_cfg = model_dir / "tokenizer_config.json"
    declared = None
    if tok_cfg.is_file():
        declared = json.loads(tok_cfg.read_text()).get("model_max_length")
    candidates = [int(v) for v in (declared, limit) if isinstance(v, (int, float)) and v < 1e9]
    if not candidates:
        raise ValueError(f"{model_dir}: no max length known: pass max_length")
    return min(candidates)


def _pad_id(tok_json: dict, tokenizer, model_dir: Path, config: dict) -> int:
    """The id the tokenizer pads with (RoBERTa's is 1: its position ids depend on it)."""
    padding = tok_json.get("padding") or {}
    if isinstance(padding.get("pad_id"), int):
        return padding["pad_id"]
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = model_dir / name
        if f.is_file():
            tok = json.loads(f.read_text()).get("pad_token")
            if isinstance(tok, dict):
                tok = tok.get("content")
            if isinstance(tok, str) and tokenizer.token_to_id(tok) is not None:
                return int(tokenizer.token_to_id(tok))
    pad = config.get("pad_token_id")
    return int(pad) if isinstance(pad, int) else 0


def _batch(
    lengths: tuple[int, ...],
    vocab_size: int,
    pad_id: int,
    with_mask: bool,
    with_type_ids: bool,
    gen: torch.Generator,
) -> tuple[torch.Tensor, ...]:
    """Random ids right-padded with `pad_id` to the longest row, its 1/0 mask, zero type ids."""
    n, t = len(lengths), max(lengths)
    ids = torch.full((n, t), pad_id, dtype=torch.int64)
    mask = torch.zeros((n, t), dtype=torch.int64)
    low = min(1000, vocab_size // 2)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(low, vocab_size, (length,), generator=gen)
        mask[i, :length] = 1
    args = [ids]
    if with_mask:
        args.append(mask)
    if with_type_ids:
        args.append(torch.zeros_like(ids))
    return tuple(args)


def _verify(eager: nn.Module, traced, batch: tuple[torch.Tensor, ...], lengths) -> None:
    with torch.no_grad():
        want = eager(*batch)
        got = traced(*batch)
    shapes = f"input_ids {list(batch[0].shape)} (rows of {list(lengths)} tokens)"
    if got.shape != want.shape:
        raise RuntimeError(
            f"the traced model returns {list(got.shape)} where the eager one returns "
            f"{list(want.shape)} on {shapes}: the trace froze a shape"
        )
    diff = (got - want).abs().max().item()
    if not diff <= TOLERANCE:
        raise RuntimeError(
            f"the traced model differs from the eager one by {diff:.3g} (> {TOLERANCE}) on "
            f"{shapes}: the trace froze a shape or a branch"
        )


def _spec(
    *,
    column: str,
    output: str,
    tokenizer: str,
    max_length: int,
    vocab_size: int,
    tokenizer_sha256: str,
    pad_id: int,
    with_mask: bool,
    with_type_ids: bool,
    hidden: int,
    pooling: str,
    normalize: bool,
    sha256: str,
) -> dict[str, Any]:
    inputs = _text_inputs(
        column=column,
        tokenizer=tokenizer,
        max_length=max_length,
        vocab_size=vocab_size,
        tokenizer_sha256=tokenizer_sha256,
        pad_id=pad_id,
        with_mask=with_mask,
        with_type_ids=with_type_ids,
    )
    post: list[dict[str, Any]] = [{"op": f"{pooling}_pool", "mask": "attention_mask"}]
    if normalize:
        post.append({"op": "l2_normalize"})
    return {
        "spec_version": 2,
        "inputs": inputs,
        "outputs": [{"name": output, "column": "vector", "shape": [hidden], "post": post}],
        "sha256": sha256,
    }


def _text_inputs(
    *,
    column: str,
    tokenizer: str,
    max_length: int,
    vocab_size: int,
    tokenizer_sha256: str,
    pad_id: int,
    with_mask: bool,
    with_type_ids: bool,
) -> list[dict[str, Any]]:
    inputs: list[dict[str, Any]] = [
        {
            "name": "input_ids",
            "kind": "text",
            "column": column,
            "dtype": "int64",
            "tokenizer": tokenizer,
            "max_length": max_length,
            "vocab_size": vocab_size,
            "tokenizer_sha256": tokenizer_sha256,
            "pad_value": pad_id,
        }
    ]
    if with_mask:
        inputs.append(
            {"name": "attention_mask", "kind": "mask", "of": "input_ids", "dtype": "int64"}
        )
    if with_type_ids:
        inputs.append(
            {"name": "token_type_ids", "kind": "type_ids", "of": "input_ids", "dtype": "int64"}
        )
    return inputs


def _classes(model_dir: Path, config: dict) -> tuple[list[str], str]:
    """The class names (`id2label`, by index) and the activation of a sequence classifier's
    `config.json`, as Hugging Face's text-classification pipeline picks it."""
    cfg = model_dir / "config.json"
    archs = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise ValueError(
            f"{cfg}: architectures {archs} has no ...ForSequenceClassification: not a "
            "sequence classifier (its head would be random)"
        )
    id2label = config.get("id2label") or {}
    k = int(config.get("num_labels") or len(id2label))
    labels = [id2label.get(str(i), id2label.get(i)) for i in range(k)]
    if k < 1 or any(not isinstance(x, str) for x in labels):
        raise ValueError(f"{cfg}: id2label {id2label} does not name the classes 0..{k - 1}")
    problem = config.get("problem_type")
    if problem is None:
        problem = "single_label_classification" if k > 1 else "multi_label_classification"
    if problem not in _ACTIVATIONS:
        raise ValueError(
            f"{cfg}: problem_type {problem!r} is not supported (torchspark classifies with "
            f"{sorted(_ACTIVATIONS)})"
        )
    return labels, _ACTIVATIONS[problem]


def _classifier_spec(
    inputs: list[dict[str, Any]], labels: list[str], activation: str, sha256: str
) -> dict[str, Any]:
    post = [{"op": activation}]
    k = len(labels)
    return {
        "spec_version": 2,
        "inputs": inputs,
        "outputs": [
            {"name": "prediction", "column": "prediction", "post": post},
            {"name": "probability", "column": "vector", "shape": [k], "post": post},
            {"name": "predicted_label", "column": "label", "labels": labels, "post": post},
            {"name": "top_k", "column": "top_k", "labels": labels, "post": post},
            {"name": "logits", "column": "vector", "shape": [k]},
        ],
        "sha256": sha256,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
