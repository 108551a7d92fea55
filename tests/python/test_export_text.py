"""torchspark.export_text_model: the traced file against the eager model and
sentence-transformers' embeddings (text_expected.json), the spec it writes, and its refusals.

The runtime (Rust tokenizer, pooling post ops) is tested elsewhere; here the spec's post ops are
applied with torch, as the contract defines them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
TEXT = ROOT / "tests" / "fixtures" / "out" / "text"
sys.path.insert(0, str(ROOT / "python"))

from torchspark.export_text import _verify, export_text_model  # noqa: E402


@pytest.fixture(scope="module")
def text() -> Path:
    if not (TEXT / "text_expected.json").exists():  # written last
        python = os.environ.get("TORCHSPARK_FIXTURE_PYTHON", sys.executable)
        subprocess.run([python, str(ROOT / "tests/fixtures/make_text_fixtures.py")], check=True)
    return TEXT


@pytest.fixture(scope="module")
def expected(text) -> dict:
    return json.loads((text / "text_expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def exported(text, tmp_path_factory) -> Path:
    """A fresh export of the MiniLM folder (verify on)."""
    return export_text_model(text / "src", tmp_path_factory.mktemp("export") / "m.pt")


def _padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(r) for r in ids)
    x = torch.zeros(len(ids), t, dtype=torch.int64)
    m = torch.zeros_like(x)
    for i, r in enumerate(ids):
        x[i, : len(r)] = torch.tensor(r)
        m[i, : len(r)] = 1
    return x, m


def _post(hidden: torch.Tensor, mask: torch.Tensor, post: list[dict]) -> torch.Tensor:
    """The contract's post ops, in torch."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    for op in post:
        if op["op"] == "mean_pool":
            hidden = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        elif op["op"] == "cls_pool":
            hidden = hidden[:, 0]
        elif op["op"] == "max_pool":
            hidden = hidden.masked_fill(m == 0, float("-inf")).max(1).values
        elif op["op"] == "l2_normalize":
            hidden = torch.nn.functional.normalize(hidden, dim=-1)
        else:
            raise AssertionError(op)
    return hidden


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_spec_pins_the_model_and_a_byte_copy_of_the_tokenizer(text, exported):
    spec = json.loads(exported.read_text())
    pt, tok = exported.with_suffix(".pt"), exported.with_name("m.tokenizer.json")
    assert spec["spec_version"] == 2
    assert spec["sha256"] == _sha(pt)
    assert tok.read_bytes() == (text / "src" / "tokenizer.json").read_bytes()
    assert spec["inputs"] == [
        {
            "name": "input_ids",
            "kind": "text",
            "column": "text",
            "dtype": "int64",
            "tokenizer": "m.tokenizer.json",
            "max_length": 256,  # sentence_bert_config.json, not tokenizer.json's 128
            "vocab_size": 30522,
            "tokenizer_sha256": _sha(tok),
            "pad_value": 0,
        },
        {"name": "attention_mask", "kind": "mask", "of": "input_ids", "dtype": "int64"},
        {"name": "token_type_ids", "kind": "type_ids", "of": "input_ids", "dtype": "int64"},
    ]
    assert spec["outputs"] == [
        {
            "name": "embedding",
            "column": "vector",
            "shape": [384],
            "post": [{"op": "mean_pool", "mask": "attention_mask"}, {"op": "l2_normalize"}],
        }
    ]


def test_traced_model_matches_eager_and_sentence_transformers(text, expected, exported):
    from transformers import AutoModel

    spec = json.loads(exported.read_text())
    traced = torch.jit.load(str(exported.with_suffix(".pt")))
    eager = AutoModel.from_pretrained(str(text / "src"), local_files_only=True).eval()
    ref = torch.tensor(expected["embeddings"])
    emb = torch.empty_like(ref)
    # Short and long rows apart: padding all 40 to 256 tokens would triple the time.
    short = [k for k, r in enumerate(expected["ids"]) if len(r) <= 64]
    long = [k for k, r in enumerate(expected["ids"]) if len(r) > 64]
    assert len(long) == 4
    for rows in (short, long):
        x, m = _padded([expected["ids"][k] for k in rows])
        with torch.no_grad():
            got = traced(x, m, torch.zeros_like(x))
            want = eager(input_ids=x, attention_mask=m, token_type_ids=torch.zeros_like(x))
        assert got.shape == (len(rows), x.shape[1], 384)
        assert (got - want.last_hidden_state)[m.bool()].abs().max().item() <= 1e-5
        emb[rows] = _post(got, m, spec["outputs"][0]["post"])
    assert (emb - ref).abs().max().item() <= 1e-5
    i, j = expected["pair"]
    assert abs(float(emb[i] @ emb[j]) - 0.755) < 1e-3


def test_plain_transformers_folder_defaults_and_overrides(text, tmp_path):
    """No modules.json: mean pooling, no normalize, max_length from the tokenizer capped by the
    positions; `pooling=` / `normalize=` override. A tiny random BERT keeps it fast."""
    from transformers import BertConfig, BertModel

    src = tmp_path / "plain"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    BertModel(config).eval().save_pretrained(src)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # model_max_length 512 > 128
        shutil.copy(text / "src" / f, src / f)

    spec = json.loads(export_text_model(src, tmp_path / "a.pt").read_text())
    assert spec["inputs"][0]["max_length"] == 128
    assert spec["outputs"][0]["shape"] == [16]
    assert spec["outputs"][0]["post"] == [{"op": "mean_pool", "mask": "attention_mask"}]

    path = export_text_model(
        src, tmp_path / "b.pt", pooling="cls", normalize=True, column="doc", output="vec"
    )
    spec = json.loads(path.read_text())
    assert spec["inputs"][0]["column"] == "doc"
    assert spec["outputs"][0]["name"] == "vec"
    assert [p["op"] for p in spec["outputs"][0]["post"]] == ["cls_pool", "l2_normalize"]


def test_unfrozen_export_keeps_weights_and_no_integer_buffers(text, tmp_path):
    """freeze=False is for the runtime option precision="bf16", whose libtorch cast reaches
    every buffer: BERT's integer position_ids must be graph constants, not buffers."""
    from transformers import BertConfig, BertModel

    src = tmp_path / "plain"
    config = BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    assert any(not b.is_floating_point() for b in BertModel(config).buffers())
    BertModel(config).eval().save_pretrained(src)
    shutil.copy(text / "src" / "tokenizer.json", src / "tokenizer.json")
    path = export_text_model(src, tmp_path / "u.pt", freeze=False, max_length=64)
    module = torch.jit.load(str(path.with_suffix(".pt")))
    assert len(list(module.parameters())) > 0
    assert [n for n, b in module.named_buffers() if not b.is_floating_point()] == []


def _st_copy(text: Path, dst: Path) -> Path:
    """The MiniLM folder without its weights (refusals come before the model is loaded)."""
    shutil.copytree(text / "src", dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


@pytest.mark.parametrize(
    ("mode", "named"),
    [("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"), ("pooling_mode_max_tokens", "max")],
)
def test_refuses_an_unsupported_or_combined_pooling(text, tmp_path, mode, named):
    src = _st_copy(text, tmp_path / "st")
    cfg = src / "1_Pooling" / "config.json"
    data = json.loads(cfg.read_text())
    data[mode] = True  # mean stays on: sqrt_len is unsupported, mean + max is a combination
    cfg.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"1_Pooling/config.json: pooling .*'{named}'"):
        export_text_model(src, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_refuses_other_modules_bad_arguments_and_lowercasing_mismatch(text, tmp_path):
    src = _st_copy(text, tmp_path / "st")
    modules = json.loads((src / "modules.json").read_text())
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    (src / "modules.json").write_text(json.dumps([*modules, dense]))
    with pytest.raises(
        ValueError, match=r"module '3' of type 'sentence_transformers.models.Dense'"
    ):
        export_text_model(src, tmp_path / "out.pt")
    (src / "modules.json").write_text(json.dumps(modules))

    with pytest.raises(ValueError, match="pooling must be one of"):
        export_text_model(src, tmp_path / "out.pt", pooling="weightedmean")
    with pytest.raises(ValueError, match="format must be one of"):
        export_text_model(src, tmp_path / "out.pt", format="onnx")
    with pytest.raises(
        ValueError, match="max_length 1024 > the model's max_position_embeddings 512"
    ):
        export_text_model(src, tmp_path / "out.pt", max_length=1024)

    tok = json.loads((src / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False
    (src / "tokenizer.json").write_text(json.dumps(tok))
    (src / "sentence_bert_config.json").write_text('{"max_seq_length": 256, "do_lower_case": true}')
    with pytest.raises(ValueError, match="do_lower_case is true but .*does not lowercase"):
        export_text_model(src, tmp_path / "out.pt")
    with pytest.raises(FileNotFoundError, match="neither modules.json nor config.json"):
        export_text_model(tmp_path / "empty", tmp_path / "out.pt")


class _FrozenLength(torch.nn.Module):
    """`int(shape)` is a Python int to the tracer: the trace keeps the example's length."""

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ids.shape[0], int(ids.shape[1]), 4) + mask[:, :1, None]


def test_verify_names_the_shapes_of_a_trace_that_froze_one():
    eager = _FrozenLength()
    example = (torch.ones(2, 9, dtype=torch.int64), torch.ones(2, 9, dtype=torch.int64))
    with pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(eager, example, check_trace=False)
    batch = (torch.ones(3, 63, dtype=torch.int64), torch.ones(3, 63, dtype=torch.int64))
    with pytest.raises(
        RuntimeError,
        match=r"returns \[3, 9, 4\] where the eager one returns"
        r" \[3, 63, 4\] on input_ids \[3, 63\] \(rows of \[4, 17, 63\] tokens\)",
    ):
        _verify(eager, traced, batch, (4, 17, 63))
