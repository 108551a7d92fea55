"""AOTInductor packages (`.pt2`) in every entry point: NativeModel (C ABI), the transformers
(JVM, JNI) and the SQL UDFs, against PyTorch running the same package
(`torch._inductor.aoti_load_package`, in tests/fixtures/make_fixtures.py)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import zipfile

import numpy as np
import pytest
import torch
from test_helpers import TwoWays, two_ways_rows, two_ways_spec

import torchspark
from conftest import tol
from torchspark import ImageFeaturizer, ImageScorer, NativeModel
from torchspark.models import ResNet20


def _images(fixtures, expected):
    names = sorted(expected)
    return names, [(fixtures / "images" / n).read_bytes() for n in names]


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def test_native_model_runs_a_package_like_pytorch(fixtures, expected):
    names, blobs = _images(fixtures, expected)
    m = NativeModel(str(fixtures / "resnet20_aoti.pt2"))
    out = m.score(blobs, batch_size=7).to_pydict()
    feats = m.featurize(blobs, batch_size=7).to_pydict()
    for i, n in enumerate(names):
        e = expected[n]["resnet20_aoti"]
        assert out["error"][i] is None
        assert np.abs(np.array(out["probability"][i]) - e["probability"]).max() <= tol(n), n
        scale = max(1.0, np.abs(e["features"]).max())
        assert np.abs(np.array(feats["features"][i]) - e["features"]).max() <= tol(n) * scale


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_reduced_precision_packages_run_as_compiled(fixtures, expected, kind):
    names, blobs = _images(fixtures, expected)
    m = NativeModel(str(fixtures / f"tuple_net_{kind}.pt2"))
    out = m.score(blobs).to_pydict()
    feats = m.featurize(blobs).to_pydict()  # the package's `embed` model
    for i, n in enumerate(names):
        e = expected[n][f"tuple_net_{kind}"]
        assert np.abs(np.array(out["probability"][i]) - e["probability"]).max() <= tol(n), n
        assert np.abs(np.array(feats["features"][i]) - e["features"]).max() <= tol(n), n
    spec = json.loads((fixtures / f"tuple_net_{kind}.json").read_text())
    assert spec["precision"] == kind
    # And the compiled precision stays close to the fp32 network (TorchScript, in PyTorch): a
    # package that misreads its input (say, compiled for another memory layout) fails here.
    for i, n in enumerate(names):
        fp32 = np.array(expected[n]["tuple_net"]["probability"])
        assert np.abs(np.array(out["probability"][i]) - fp32).max() <= 5e-3, n


def test_bad_packages_raise_naming_the_file(fixtures, tmp_path):
    with pytest.raises(torchspark.ModelLoadError, match=r"tuple_net_cuda\.pt2.*cuda"):
        NativeModel(str(fixtures / "tuple_net_cuda.pt2"))
    broken = tmp_path / "broken.pt2"
    data = (fixtures / "tuple_net_aoti.pt2").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    shutil.copyfile(fixtures / "tuple_net_aoti.json", tmp_path / "broken.json")
    for _ in range(2):
        with pytest.raises(torchspark.ModelLoadError, match=r"broken\.pt2"):
            NativeModel(str(broken))


def test_package_needing_cpu_flags_this_host_lacks_raises_naming_file_host_and_flag(
    fixtures, tmp_path
):
    # What an AVX2-only node meets with a package exported on an AVX-512 machine: a clear
    # error before any of the package's code loads, instead of SIGILL killing this process.
    pt2 = tmp_path / "avx512_only.pt2"
    shutil.copyfile(fixtures / "tuple_net_aoti.pt2", pt2)
    spec = json.loads((fixtures / "tuple_net_aoti.json").read_text())
    spec["cpu"] = {"flags": ["avx2", "torchspark_no_such_flag"]}
    pt2.with_suffix(".json").write_text(json.dumps(spec))
    host = re.escape(socket.gethostname())
    wanted = rf"avx512_only\.pt2: .*this host \({host}\) lacks: torchspark_no_such_flag;"
    for _ in range(2):
        with pytest.raises(torchspark.ModelLoadError, match=wanted) as e:
            NativeModel(str(pt2))
        assert 'cpu="x86-64-v3"' in str(e.value)
    # This process is alive and still scores with the package whose spec it can satisfy.
    png = (fixtures / "images" / "digit_00_label0.png").read_bytes()
    out = NativeModel(str(fixtures / "tuple_net_aoti.pt2")).score([png]).to_pydict()
    assert out["error"][0] is None


def test_package_metadata_isa_is_checked_when_the_spec_says_nothing_of_the_cpu(fixtures, tmp_path):
    # Packages exported before `cpu` existed (or by other tools) still name their vector ISA
    # in their metadata; an AMX one is refused on a host without AMX, loaded on one with it.
    pt2 = tmp_path / "amx.pt2"
    with (
        zipfile.ZipFile(fixtures / "tuple_net_aoti.pt2") as zin,
        zipfile.ZipFile(pt2, "w", zipfile.ZIP_STORED) as zout,
    ):
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("_metadata.json"):
                meta = json.loads(data)
                meta["AOTI_CPU_ISA"] = "AVX512 AVX512_VNNI AMX_TILE"
                data = json.dumps(meta).encode()
            zout.writestr(item.filename, data)
    spec = json.loads((fixtures / "tuple_net_aoti.json").read_text())
    del spec["cpu"]
    pt2.with_suffix(".json").write_text(json.dumps(spec))
    from torchspark.node import cpu_flags

    needed = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "fma"}
    needed |= {"amx_tile", "amx_bf16", "amx_int8"}
    missing = needed - cpu_flags()
    if not missing:
        assert NativeModel(str(pt2)).score([b"not an image"]).num_rows == 1
        return
    with pytest.raises(torchspark.ModelLoadError, match="AOTI_CPU_ISA") as e:
        NativeModel(str(pt2))
    assert "amx.pt2" in str(e.value) and all(f in str(e.value) for f in missing), e.value


def test_export_records_the_portable_cpu_its_code_needs(fixtures):
    # The fixture packages are export_model's default: x86-64-v3, no AVX-512 anywhere.
    for name in ("resnet20_aoti", "tuple_net_aoti", "tuple_net_int8", "tuple_net_bf16"):
        cpu = json.loads((fixtures / f"{name}.json").read_text())["cpu"]
        assert cpu["march"] == "x86-64-v3", name
        assert {"avx2", "fma", "bmi1", "bmi2", "f16c", "abm", "movbe"} <= set(cpu["flags"]), cpu
        assert not [f for f in cpu["flags"] if f.startswith(("avx512", "amx"))], cpu
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    with zipfile.ZipFile(fixtures / "resnet20_aoti.pt2") as z:
        so = next(n for n in z.namelist() if n.endswith(".so"))
        code = z.read(so)
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(code)
        f.flush()
        asm = subprocess.run([objdump, "-d", f.name], capture_output=True, text=True).stdout
    # AVX-512 code names zmm registers; AVX2 code uses ymm.
    assert "ymm" in asm and "zmm" not in asm


def test_export_model_checks_its_options_before_compiling(tmp_path):
    spec = {"input": {"height": 32, "width": 32}}
    with pytest.raises(ValueError, match="sample"):
        torchspark.export_model(
            ResNet20(), tmp_path / "m.pt2", spec, format="aoti", precision="int8"
        )
    with pytest.raises(ValueError, match='format="aoti"'):
        torchspark.export_model(ResNet20(), tmp_path / "m.pt", spec, precision="bf16")
    with pytest.raises(ValueError, match="format"):
        torchspark.export_model(ResNet20(), tmp_path / "m.pt", spec, format="onnx")
    with pytest.raises(ValueError, match='cpu= applies to format="aoti"'):
        torchspark.export_model(ResNet20(), tmp_path / "m.pt", spec, cpu="native")
    with pytest.raises(ValueError, match="cpu must be"):
        torchspark.export_model(ResNet20(), tmp_path / "m.pt2", spec, format="aoti", cpu="-O0")


def _files(spark, fixtures, glob="*"):
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", glob)
        .load(str(fixtures / "images"))
    )


def test_transformers_score_and_featurize_packages(spark, fixtures, expected):
    pt2 = str(fixtures / "resnet20_aoti.pt2")
    out = ImageScorer(modelPath=pt2, inputCol="content", batchSize=7).transform(
        _files(spark, fixtures)
    )
    rows = out.select("path", "prediction", "probability").collect()
    assert len(rows) == len(expected)
    for r in rows:
        n = _name(r.path)
        e = np.array(expected[n]["resnet20_aoti"]["probability"])
        assert np.abs(r.probability.toArray() - e).max() <= tol(n), n
    tuple_pt2 = str(fixtures / "tuple_net_aoti.pt2")  # featurize {"method": "embed"}
    feats = ImageFeaturizer(modelPath=tuple_pt2, inputCol="content").transform(
        _files(spark, fixtures, "*.png")
    )
    for r in feats.select("path", "features").collect():
        e = np.array(expected[_name(r.path)]["tuple_net_aoti"]["features"])
        assert np.abs(r.features.toArray() - e).max() <= 1e-5


def test_sql_udfs_run_a_package(spark, fixtures, expected):
    torchspark.register_udfs(spark, "classify_pt2", str(fixtures / "resnet20_aoti.pt2"))
    _files(spark, fixtures, "digit_1*.png").createOrReplaceTempView("imgs_pt2")
    rows = spark.sql(
        "SELECT path, classify_pt2(content) AS s, classify_pt2_features(content) AS f FROM imgs_pt2"
    ).collect()
    assert len(rows) == 10
    for r in rows:
        e = expected[_name(r.path)]["resnet20_aoti"]
        assert r.s.prediction == float(np.argmax(e["probability"])) and r.s.error is None
        assert isinstance(r.s.prediction, float)
        assert np.abs(np.array(r.f) - e["features"]).max() <= 1e-5 * max(
            1.0, np.abs(e["features"]).max()
        )


def test_torch_runs_the_fixture_package_like_the_module(fixtures):
    # export_model(format="aoti") wrote it; the oracle here is eager PyTorch on the same weights.
    pt = torch.jit.load(str(fixtures / "resnet20.pt"))
    pkg = torch._inductor.aoti_load_package(str(fixtures / "resnet20_aoti.pt2"))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits, feats = pkg(x)
        assert (logits - pt(x)).abs().max() <= 1e-4
        assert (feats - pt.features(x)).abs().max() <= 1e-4


def test_export_aoti_takes_a_version_2_specs_declared_inputs(tmp_path):
    # Four inputs (an image, a vector, a padded sequence with a dynamic length and its mask)
    # and the spec's `method`: one package holds `model` and `embed`; both run natively with
    # PyTorch's values, passes of different lengths included.
    torch.manual_seed(3)
    net = TwoWays().eval()
    table, args = two_ways_rows(n=7, seed=1)
    spec_file = torchspark.export_model(
        net, tmp_path / "embed.pt2", two_ways_spec("embed", "spec"), format="aoti"
    )
    spec = json.loads(spec_file.read_text())
    assert spec["method"] == "embed" and spec["cpu"]["march"] == "x86-64-v3"
    with zipfile.ZipFile(tmp_path / "embed.pt2") as z:
        parts = [n.split("/") for n in z.namelist()]
    models = {p[3] for p in parts if p[1:3] == ["data", "aotinductor"] and len(p) > 4}
    assert models == {"model", "embed"}, models
    # The same package under a spec without `method` runs its `model`.
    shutil.copyfile(tmp_path / "embed.pt2", tmp_path / "forward.pt2")
    plain = dict(two_ways_spec(None, "spec"), cpu=spec["cpu"])
    (tmp_path / "forward.json").write_text(json.dumps(plain))
    with torch.no_grad():
        want = {"forward": net(*args)[0].numpy(), "embed": net.embed(*args)[0].numpy()}
    for name in ("forward", "embed"):
        out = NativeModel(tmp_path / f"{name}.pt2").predict(table, batch_size=2).to_pydict()
        assert out["error"] == [None] * table.num_rows
        np.testing.assert_allclose(np.array(out["out"]), want[name], atol=1e-5)


def test_export_aoti_refuses_what_a_package_cannot_take_before_compiling(tmp_path):
    listed = {
        "spec_version": 2,
        "inputs": [{"name": "images", "kind": "image", "shape": [3, -1, -1], "ragged": "list"}],
        "outputs": [{"name": "mean", "column": "array", "shape": [3]}],
    }
    with pytest.raises(ValueError, match=r"inputs\[0\] \(images\): a `ragged: \"list\"` input"):
        torchspark.export_model(ResNet20(), tmp_path / "l.pt2", listed, format="aoti")
    two = two_ways_spec(None, "spec")
    with pytest.raises(ValueError, match="one float input: this spec has 4 inputs"):
        torchspark.export_model(TwoWays(), tmp_path / "q.pt2", two, format="aoti", precision="int8")
    assert not list(tmp_path.iterdir())
