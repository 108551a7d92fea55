"""The walkthrough notebook runs top to bottom on a fresh kernel from .venv."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from conftest import ROOT


def test_notebook_runs_without_errors(tmp_path, monkeypatch):
    path = ROOT / "notebooks" / "cifar_scoring_walkthrough.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "strip outputs"
    monkeypatch.setenv("TORCHSPARK_ROOT", str(ROOT))
    out = Path(os.environ.get("DEMO_OUT", ROOT / "demo-output"))
    if not (out / "model" / "resnet20.pt").exists():
        # A fresh clone: the notebook trains its model. Two epochs (not the demo's twelve) in
        # a folder of the test's own, so that `make demo` never reuses a half-trained model.
        out = tmp_path / "demo-output"
        monkeypatch.setenv("TRAIN_EPOCHS", os.environ.get("TRAIN_EPOCHS", "2"))
    monkeypatch.setenv("DEMO_OUT", str(out))
    # The text section on 200 of the ~4,900 snippets, with the test fixture's export of MiniLM.
    monkeypatch.setenv("TEXT_ROWS", os.environ.get("TEXT_ROWS", "200"))
    minilm = ROOT / "tests" / "fixtures" / "out" / "text" / "minilm.pt"
    if minilm.exists():
        monkeypatch.setenv("TEXT_MODEL", str(minilm))
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "predictions identical to the DataFrame way" in text
    assert "logistic regression on torchspark features: accuracy" in text
    assert "faces vs non-faces on ImageNet features: held-out accuracy" in text
    assert "diabetes MLP: RMSE " in text
    assert "384-dim embeddings; cosine of the two sentences: 0.75" in text
    assert "TextEmbedder (all-MiniLM-L6-v2) + LogisticRegression accuracy" in text
    assert "cosine silhouette: k=2" in text and "the 5 snippets nearest to" in text
    assert "chelsea: " in text and "cat (" in text.split("chelsea: ", 1)[1].split("\n", 1)[0]
