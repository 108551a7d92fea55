"""The memory limits on the Python and JVM surfaces (docs/limits.md, issue 25): each size a row
chooses is a row error or a split into more forward passes, never an abort; good rows beside bad
ones equal PyTorch's outputs (and Python `tokenizers`' ids). Memory is the peak RSS of a child
interpreter, whose exit code (a signal is an abort) is checked too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.ml.linalg import Vectors
from tokenizers import Tokenizer

import torchspark
from torchspark import NativeModel, predict_arrow
from torchspark.transformers import ImageScorer, TextEmbedder, TorchModel

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "out"
OVER_ELEMENTS = r"over the limit of {} values per row \(max_row_elements\)"
OVER_BYTES = r"over the limit of {} bytes per forward pass \(max_batch_bytes"
OVER_TEXT = r"text is {} bytes, over the limit of {} bytes per row \(max_text_bytes\)"


def _ensure(script: str, sub: str, marker: str) -> Path:
    out = FIXTURES / sub
    if not (out / marker).exists():
        python = os.environ.get("TORCHSPARK_FIXTURE_PYTHON", sys.executable)
        subprocess.run([python, str(ROOT / "tests/fixtures" / script), str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def limits() -> Path:
    """tests/fixtures/out/limits (make_limit_fixtures.py, after the text fixtures)."""
    _ensure("make_text_fixtures.py", "text", "text_expected.json")
    return _ensure("make_limit_fixtures.py", "limits", "limits_expected.json")


@pytest.fixture(scope="module")
def expected(limits) -> dict:
    return json.loads((limits / "limits_expected.json").read_text())


# A child interpreter: warms the model up, resets the peak RSS, runs one scenario, reports.
PROBE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import pyarrow as pa
from torchspark import NativeModel
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
def reset():
    open("/proc/self/clear_refs", "w").write("5")
    return rss("VmRSS:")
scenario, model = sys.argv[2], sys.argv[3]
m = NativeModel(model, num_threads=2)
if scenario == "vectors":
    t = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                   ("values", pa.list_(pa.float64()))])
    rows = [{"type": 0, "size": 2**27, "indices": [i], "values": [1.0]} for i in range(16)]
    rows.insert(3, {"type": 0, "size": 10, "indices": [1, 3], "values": [2.0, 4.0]})
    rows.append({"type": 1, "size": None, "indices": None, "values": [1.0, 2.5, 3.0]})
    warm = pa.table({"x": pa.array(rows[3:4], t)})
    batch = pa.table({"x": pa.array(rows, t)})
    col = "total"
elif scenario == "images":
    d = sys.argv[4]
    big, huge, small = (open(f"{d}/{n}", "rb").read() for n in
                        ("uniform_4096.png", "uniform_8000.png", "small.png"))
    rows = [big] * 8
    rows.insert(2, huge)
    rows.insert(5, small)
    warm = pa.table({"image": pa.array([small], pa.binary())})
    batch = pa.table({"image": pa.array(rows, pa.binary())})
    col = "mean"
elif scenario == "ragged":
    rows = [[float(i)] * 4 for i in range(63)]
    rows.insert(40, [0.5] * 2_000_000)
    warm = pa.table({"x": pa.array([[1.0] * 4], pa.list_(pa.float32()))})
    batch = pa.table({"x": pa.array(rows, pa.list_(pa.float32()))})
    col = "total"
elif scenario == "ragged2d":
    def r(h, w, v):
        return [[v] * w for _ in range(h)]
    rows = [r(2, 3, 0.5), r(6000, 1, 1.0), r(3, 2, 2.0), r(1, 6000, 0.25), r(1, 1, 7.0)]
    t = pa.list_(pa.list_(pa.float32()))
    warm = pa.table({"x": pa.array([r(2, 2, 1.0)], t)})
    batch = pa.table({"x": pa.array(rows, t)})
    col = "total"
elif scenario == "text":
    rows = ["Hello, world!", "a" * (50 << 20), "spark torch <mask> tensor"]
    warm = pa.table({"text": rows[::2]})
    batch = pa.table({"text": rows})
    col = "ids"
elif scenario == "top_k":
    d = sys.argv[4]
    blob = open(d, "rb").read()
    warm = [blob]
m.score(warm) if scenario == "top_k" else m.predict(warm)
before = reset()
t0 = time.monotonic()
if scenario == "top_k":
    out = m.score([blob, b"not an image"], top_k=10**12).to_pydict()
    col = "top_k"
else:
    out = m.predict(batch).to_pydict()
took = time.monotonic() - t0
print(json.dumps({"grew_mb": (rss("VmHWM:") - before) / 1024, "seconds": took,
                  "out": out[col], "error": out["error"]}))
"""


def probe(scenario: str, model: Path, *extra: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "python"), scenario, str(model), *extra],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"exit {r.returncode} (negative: a signal)\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- per-row elements ------------------------------------------------------------------------------


def test_sparse_vectors_past_the_row_limit_are_row_errors_with_flat_memory(limits):
    r = probe("vectors", limits / "sum_pad.pt")
    assert r["grew_mb"] < 64, r["grew_mb"]
    for i, (total, e) in enumerate(zip(r["out"], r["error"])):
        if i in (3, 17):
            assert e is None and total == (6.0 if i == 3 else 6.5), (i, e, total)
        else:
            assert total is None
            assert e.startswith(f"row {i}: input `x` (column x): sparse vector of size 134,217,728")
            assert re.search(OVER_ELEMENTS.format("67,108,864"), e), e


def test_jvm_sparse_vectors_past_the_row_limit_are_row_errors(spark, limits):
    rows = [(i, Vectors.sparse(2**27, [i], [1.0])) for i in range(16)]
    rows.insert(3, (100, Vectors.sparse(10, [1, 3], [2.0, 4.0])))
    rows.append((101, Vectors.dense([1.0, 2.5, 3.0])))
    df = spark.createDataFrame(rows, ["id", "x"]).coalesce(1)
    model = TorchModel(modelPath=str(limits / "sum_pad.pt"), handleInvalid="keep")
    out = {r.id: r for r in model.transform(df).collect()}
    assert (out[100].total, out[101].total) == (6.0, 6.5)
    for i in range(16):
        assert out[i].total is None
        assert re.search(OVER_ELEMENTS.format("67,108,864"), out[i].error), out[i].error
        assert "sparse vector of size 134,217,728" in out[i].error
    # maxRowElements lowers the limit for this transformer.
    low = model.copy().setMaxRowElements(5)
    out = {r.id: r for r in low.transform(df.filter("id >= 100")).collect()}
    assert out[100].total is None and "sparse vector of size 10" in out[100].error
    assert re.search(OVER_ELEMENTS.format("5"), out[100].error)
    assert out[101].total == 6.5


def test_native_model_and_predict_arrow_lower_the_row_limit(spark, limits):
    table = pa.table({"x": pa.array([[1.0] * 3, [1.0] * 4], pa.list_(pa.float32()))})
    m = NativeModel(limits / "sum_pad.pt")
    out = m.predict(table, max_row_elements=3).to_pydict()
    assert out["total"] == [3.0, None]
    assert out["error"][1] == (
        "row 1: input `x` (column x): the row has 4 values, over the limit of 3 values per row "
        "(max_row_elements)"
    )
    df = spark.createDataFrame([(0, [1.0] * 3), (1, [1.0] * 4)], "id int, x array<float>")
    fn, schema = predict_arrow(
        limits / "sum_pad.pt",
        keep=["id"],
        input_schema=df.schema,
        handle_invalid="keep",
        max_row_elements=3,
    )
    rows = sorted(df.coalesce(1).mapInArrow(fn, schema).collect())
    assert rows[0].total == 3.0 and rows[1].total is None
    assert re.search(OVER_ELEMENTS.format("3"), rows[1].error)
    with pytest.raises(torchspark.ConfigError, match="max_row_elements"):
        m.predict(table, max_row_elements=-1)


# ---- per-chunk bytes ----------------------------------------------------------------------------------


def _uniform_means() -> list[float]:
    import numpy as np

    return [float(np.float32(p) * np.float32(1 / 255)) for p in (10, 120, 250)]


def test_native_size_images_are_cut_by_bytes(limits):
    r = probe("images", limits / "native_mean.pt", str(limits))
    # One 201 MB image a pass (running, queued, one assembled): 1.0-1.5 GB measured; all eight
    # in one pass need 3.2 GB before the model runs.
    assert r["grew_mb"] < 2048, r["grew_mb"]
    for i, (mean, e) in enumerate(zip(r["out"], r["error"])):
        if i == 2:
            assert mean is None
            assert e.startswith("row 2: input `images` (column image): image is 8000x8000")
            assert re.search(OVER_ELEMENTS.format("67,108,864"), e), e
        elif i != 5:
            assert e is None and mean == _uniform_means(), (i, mean, e)
    assert r["error"][5] is None and len(r["out"][5]) == 3


def test_max_batch_bytes_refuses_a_row_past_it_on_every_surface(spark, limits):
    small = (limits / "small.png").read_bytes()
    big = (limits / "uniform_4096.png").read_bytes()
    m = NativeModel(limits / "native_mean.pt")
    out = m.predict(pa.table({"image": [big, small]}), max_batch_bytes=100_000_000).to_pydict()
    assert re.search(OVER_BYTES.format("100,000,000"), out["error"][0]), out["error"][0]
    assert "shape [3, 4096, 4096] float32) takes 201,326,592 bytes" in out["error"][0]
    assert out["error"][1] is None and len(out["mean"][1]) == 3
    df = spark.createDataFrame([(0, big), (1, small)], "id int, image binary").coalesce(1)
    model = TorchModel(
        modelPath=str(limits / "native_mean.pt"), handleInvalid="keep", maxBatchBytes=100_000_000
    )
    rows = sorted(model.transform(df).collect())
    assert rows[0].mean is None and re.search(OVER_BYTES.format("100,000,000"), rows[0].error)
    assert rows[1].error is None and len(rows[1].mean) == 3


def test_image_scorer_rows_are_cut_by_bytes_with_equal_scores(spark, fixtures, model):
    files = sorted((fixtures / "images").glob("digit_*.png"))[:7]
    blobs = [f.read_bytes() for f in files]
    m = NativeModel(model)
    whole = m.score(blobs).to_pydict()
    cut = m.score(blobs, max_batch_bytes=3 * 32 * 32 * 4).to_pydict()
    assert whole["prediction"] == cut["prediction"]
    for a, b in zip(whole["probability"], cut["probability"]):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    none = m.score(blobs[:1], max_batch_bytes=100).to_pydict()["error"][0]
    at = "row 0: input `image` (column content)"
    assert none.startswith(f"{at}: the row's input (shape [3, 32, 32] float32) takes 12,288 bytes")
    df = spark.createDataFrame(
        [(f.name, b) for f, b in zip(files, blobs)], "path string, content binary"
    )
    scorer = ImageScorer(modelPath=model, inputCol="content", maxBatchBytes=3 * 32 * 32 * 4)
    got = {r.path: r.prediction for r in scorer.transform(df).collect()}
    assert [got[f.name] for f in files] == [float(p) for p in whole["prediction"]]


# ---- padding waste ------------------------------------------------------------------------------------


def test_padded_rows_are_cut_so_padding_stays_bounded(limits):
    r = probe("ragged", limits / "sum_pad.pt")
    # Padded together: +1,474 MiB.
    assert r["grew_mb"] < 160, r["grew_mb"]
    want = [4.0 * i for i in range(40)] + [1_000_000.0] + [4.0 * i for i in range(40, 63)]
    assert r["out"] == want and all(e is None for e in r["error"])
    r = probe("ragged2d", limits / "sum2d.pt")
    # Padded together: +825 MiB.
    assert r["grew_mb"] < 64, r["grew_mb"]
    assert r["out"] == [3.0, 6000.0, 12.0, 1500.0, 7.0]


def test_jvm_padded_rows_equal_their_sums(spark, limits):
    rows = [(i, [[float(i)] * 2] * 2) for i in range(5)]
    rows.insert(2, (10, [[1.0]] * 6000))
    rows.append((11, [[0.25] * 6000]))
    df = spark.createDataFrame(rows, "id int, x array<array<float>>").coalesce(1)
    out = {
        r.id: r.total
        for r in TorchModel(modelPath=str(limits / "sum2d.pt")).transform(df).collect()
    }
    assert out == {0: 0.0, 1: 4.0, 2: 8.0, 3: 12.0, 4: 16.0, 10: 6000.0, 11: 1500.0}


# ---- text -----------------------------------------------------------------------------------------------


# Two short texts between two long ones: sorted by length, the long rows share a forward pass
# and so do the short ones; in the order given, each short row is padded to a long one's length.
SORT_TEXTS = [
    "a",
    "spark torch tensor model of many words here",
    "b",
    "another rather long sentence of words indeed",
]


def _padding(ids: list[list[int]]) -> list[int]:
    """The -1 ids (padding) of each row: the model returns its pass's padded ids."""
    return [sum(1 for i in row if i == -1) for row in ids]


def _padding_of_passes(lengths: list[int], passes: list[tuple[int, ...]]) -> list[int]:
    out = [0] * len(lengths)
    for rows in passes:
        for r in rows:
            out[r] = max(lengths[k] for k in rows) - lengths[r]
    return out


def test_sort_by_length_is_reachable_from_every_python_surface(spark, limits):
    model = limits / "ids_wordpiece.pt"
    want = _python_ids(limits, "wordpiece", SORT_TEXTS, 64)
    lengths = [len(w) for w in want]
    # batch_size 2: sorted, passes (1, 3) and (0, 2); in the order given, (0, 1) and (2, 3).
    padding = {
        True: _padding_of_passes(lengths, [(1, 3), (0, 2)]),
        False: _padding_of_passes(lengths, [(0, 1), (2, 3)]),
    }
    assert padding[True] != padding[False]
    m = NativeModel(model)
    table = pa.table({"text": SORT_TEXTS})
    df = spark.createDataFrame(list(enumerate(SORT_TEXTS)), "id int, text string").coalesce(1)
    for sort in (True, False):
        got = {
            "predict": m.predict(table, batch_size=2, sort_by_length=sort)["ids"].to_pylist(),
            "submit": m.submit(table, batch_size=2, sort_by_length=sort)
            .result()["ids"]
            .to_pylist(),
        }
        fn, schema = predict_arrow(
            model, keep=["id"], input_schema=df.schema, batch_size=2, sort_by_length=sort
        )
        got["predict_arrow"] = [r.ids for r in sorted(df.mapInArrow(fn, schema).collect())]
        fn, schema = torchspark.embed_arrow(
            model,
            output_col="ids",
            keep=["id"],
            input_schema=df.schema,
            batch_size=2,
            sort_by_length=sort,
        )
        got["embed_arrow"] = [r.ids for r in sorted(df.mapInArrow(fn, schema).collect())]
        for surface, ids in got.items():
            assert _padding(ids) == padding[sort], (surface, sort)
            assert _ids({"ids": ids}) == want, (surface, sort)
    with pytest.raises(torchspark.ConfigError, match="sort_by_length must be True or False"):
        m.predict(table, sort_by_length="no")
    with pytest.raises(torchspark.ConfigError, match="sort_by_length must be True or False"):
        torchspark.embed_arrow(model, sort_by_length=1)


def _python_ids(limits: Path, name: str, texts: list[str], max_length: int) -> list[list[int]]:
    tok = Tokenizer.from_file(str(limits / f"{name}.tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return [e.ids for e in tok.encode_batch(texts)]


def _ids(out: dict) -> list:
    return [None if r is None else [i for i in r if i != -1] for r in out["ids"]]


@pytest.mark.parametrize("name", ["wordpiece", "bytelevel", "unigram"])
def test_long_texts_give_python_tokenizers_ids(limits, expected, name):
    texts = expected["texts"]
    out = NativeModel(limits / f"ids_{name}.pt").predict(pa.table({"text": texts})).to_pydict()
    assert all(e is None for e in out["error"])
    assert _ids(out) == _python_ids(limits, name, texts, 64)


def test_text_past_max_text_bytes_is_a_row_error_at_once(limits):
    r = probe("text", limits / "ids_bytelevel.pt")
    assert r["grew_mb"] < 64 and r["seconds"] < 2, r
    assert r["error"][1] == (
        "row 1: input `input_ids` (column text): text is 52,428,800 bytes, over the limit of "
        "1,048,576 bytes per row (max_text_bytes)"
    )
    want = _python_ids(limits, "bytelevel", ["Hello, world!", "spark torch <mask> tensor"], 64)
    assert [[i for i in r["out"][k] if i != -1] for k in (0, 2)] == want


def test_max_text_bytes_on_every_surface(spark, limits, expected):
    texts = ["Hello, world!", "spark torch"]
    model = limits / "ids_wordpiece.pt"
    out = NativeModel(model).predict(pa.table({"text": texts}), max_text_bytes=12).to_pydict()
    assert re.search(OVER_TEXT.format(13, 12), out["error"][0]) and out["error"][1] is None
    df = spark.createDataFrame(list(enumerate(texts)), "id int, text string").coalesce(1)
    fn, schema = torchspark.embed_arrow(
        model,
        output_col="ids",
        keep=["id"],
        input_schema=df.schema,
        handle_invalid="keep",
        max_text_bytes=12,
    )
    rows = sorted(df.mapInArrow(fn, schema).collect())
    assert re.search(OVER_TEXT.format(13, 12), rows[0].error) and rows[1].error is None
    jvm = TorchModel(modelPath=str(model), handleInvalid="keep", maxTextBytes=12)
    rows = sorted(jvm.transform(df).collect())
    assert re.search(OVER_TEXT.format(13, 12), rows[0].error) and rows[1].error is None
    assert [i for i in rows[1].ids if i != -1] == _python_ids(limits, "wordpiece", texts[1:], 64)[0]
    minilm = FIXTURES / "text" / "minilm.pt"
    embedder = TextEmbedder(modelPath=str(minilm), handleInvalid="keep", maxTextBytes=12)
    rows = sorted(embedder.transform(df).collect())
    assert re.search(OVER_TEXT.format(13, 12), rows[0].error) and rows[0].embedding is None
    assert rows[1].error is None and len(rows[1].embedding) == 384


# ---- top-k ----------------------------------------------------------------------------------------------


def test_top_k_past_the_class_count_gives_every_class(fixtures, model):
    blob = sorted((fixtures / "images").glob("digit_*.png"))[0]
    r = probe("top_k", Path(model), str(blob))
    assert r["grew_mb"] < 64, r["grew_mb"]
    assert len(r["out"][0]) == 10 and r["out"][1] is None
    ten = NativeModel(model).score([blob.read_bytes()], top_k=10).to_pydict()["top_k"][0]
    assert r["out"][0] == ten


def test_jvm_top_k_int_max_gives_every_class(spark, fixtures, model):
    df = spark.read.format("binaryFile").load(str(fixtures / "images" / "digit_0*.png")).limit(2)
    rows = ImageScorer(modelPath=model, inputCol="content", topK=2**31 - 1).transform(df).collect()
    assert rows and all(len(r.top_k) == 10 for r in rows)
