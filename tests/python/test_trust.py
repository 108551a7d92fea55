"""What torchspark trusts on the Python side (docs/model-cache.md): nothing from the working
directory, one spec-path rule shared with the JVM and Rust, specs checked before `ship_model`
ships anything, no models over http(s)/ftp, and no `.pt2` extraction folder left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import torchspark
from conftest import ROOT
from torchspark.cluster import check_tokenizers, spec_path, tokenizer_files
from torchspark.errors import ModelLoadError, ModelSpecError

SPEC_PATHS = json.loads((ROOT / "tests" / "fixtures" / "spec_paths.json").read_text())["paths"]


@pytest.mark.parametrize(("model", "spec"), SPEC_PATHS)
def test_spec_path_follows_the_table_rust_and_the_jvm_share(model, spec):
    assert spec_path(model) == spec


def test_a_dotfile_model_finds_the_spec_the_native_loader_reads(fixtures, tmp_path):
    # `.pt` -> `.pt.json` everywhere (the JVM and Python said `.json`, Rust `.pt.json`).
    shutil.copy(fixtures / "resnet20.pt", tmp_path / ".pt")
    shutil.copy(fixtures / "resnet20.json", tmp_path / ".pt.json")
    assert "error" in torchspark.describe(tmp_path / ".pt").names
    with torchspark.NativeModel(tmp_path / ".pt") as m:
        png = next((fixtures / "images").glob("*.png")).read_bytes()
        assert m.score([png])["error"][0].as_py() is None


def _plant_torch(where):
    """A `torch` package and shared libraries in `where` whose code appends to MARKER when it
    runs: what someone would leave in a shared working directory."""
    marker = where / "MARKER"
    lib = where / "torch" / "lib"
    lib.mkdir(parents=True)
    for pkg in ("torch", "torchvision"):
        (where / pkg).mkdir(exist_ok=True)
        (where / pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('{pkg}\\n')\n")
    src = where / "planted.c"
    src.write_text(
        textwrap.dedent(f"""
        #include <stdio.h>
        __attribute__((constructor)) static void planted(void) {{
          FILE* f = fopen("{marker}", "a");
          if (f) {{ fputs("library\\n", f); fclose(f); }}
        }}""")
    )
    for name in ("libc10.so", "libtorch_cpu.so"):
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib / name), str(src)], check=True)
    return marker


@pytest.mark.parametrize(
    "argv",
    [
        # `-c` puts "" (the working directory) first on sys.path; `-m` its absolute path.
        ["-c", "from torchspark import _native as n; n.lib(); print('LIBTORCH', n.libtorch_dir())"],
        ["-m", "torchspark.node", "check"],
    ],
    ids=["python-c", "node-check"],
)
def test_never_loads_a_torch_planted_in_the_working_directory(tmp_path, argv):
    marker = _plant_torch(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    env.pop("TORCHSPARK_LIBTORCH_DIR", None)
    p = subprocess.run(
        [sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    ran = marker.read_text() if marker.exists() else ""
    assert ran == "", f"planted code ran: {ran}\n{p.stdout}{p.stderr}"
    assert p.returncode == 0, p.stdout + p.stderr
    assert "torch/lib" in p.stdout and str(tmp_path) not in p.stdout, p.stdout


@pytest.mark.parametrize("name", ["../x.json", "/etc/passwd", "sub/t.json", "a\\b.json", "..", "."])
def test_tokenizer_names_outside_the_spec_folder_are_refused_naming_the_spec(name):
    spec = {"inputs": [{"name": "text", "kind": "text", "tokenizer": name}]}
    with pytest.raises(ModelSpecError, match=r"m\.json: inputs\[0\]\.tokenizer .*file name"):
        tokenizer_files(spec, "m.json")
    with pytest.raises(ModelSpecError, match=r"inputs\[0\]\.tokenizer"):
        check_tokenizers("/models/m.json", spec)


def test_ship_model_checks_the_spec_before_shipping_anything(spark, fixtures, tmp_path):
    from pyspark import SparkFiles

    store = tmp_path / "store"
    store.mkdir()
    # Names of their own: SparkFiles keeps one file per name for the session.
    shutil.copy(fixtures / "resnet20.pt", store / "trust_escape.pt")
    secret = tmp_path / "trust_secret.json"
    secret.write_text("{}")
    spec = json.loads((fixtures / "resnet20.json").read_text())
    spec["inputs"] = [{"name": "t", "kind": "text", "tokenizer": "../trust_secret.json"}]
    (store / "trust_escape.json").write_text(json.dumps(spec))
    with pytest.raises(ModelSpecError, match=r"trust_escape\.json: inputs\[0\]\.tokenizer"):
        torchspark.ship_model(spark, f"file://{store}/trust_escape.pt")
    for name in ("trust_escape.pt", "trust_escape.json", "trust_secret.json"):
        assert not os.path.exists(SparkFiles.get(name)), f"{name} was shipped"
    # A spec that is not JSON: refused before the model ships too.
    (store / "trust_escape.json").write_text("{not json")
    with pytest.raises(ModelSpecError, match=r"trust_escape\.json: not JSON"):
        torchspark.ship_model(spark, f"file://{store}/trust_escape.pt")
    assert not os.path.exists(SparkFiles.get("trust_escape.pt"))


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1:9/m.pt", "HTTPS://models.example.com/m.pt", "ftp://h/m.pt2"]
)
def test_models_over_http_or_ftp_are_refused_up_front_naming_the_uri(spark, uri):
    with pytest.raises(ModelLoadError, match="does not read models over") as e:
        torchspark.ship_model(spark, uri)
    assert uri in str(e.value) and "cluster storage" in str(e.value)
    with pytest.raises(ModelLoadError, match="does not read models over"):
        torchspark.NativeModel(uri)
    # The JVM transformers refuse it on the driver too (ModelSource), before any job.
    images = spark.createDataFrame([(b"",)], "content binary")
    with pytest.raises(ModelLoadError, match="does not read models over"):
        torchspark.ImageScorer(modelPath=uri, inputCol="content").transform(images)


def test_pt2_loads_and_exit_with_one_loaded_leave_nothing_in_the_temp_dir(fixtures, tmp_path):
    # AOTInductor's loader extracted each package into $TMPDIR/aotinductor_XXXXXX and left it
    # whenever the model was still loaded at exit (or the process ended in os._exit).
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(fixtures / "tuple_net_aoti.pt2", models / "m.pt2")
    spec = (fixtures / "tuple_net_aoti.json").read_text()
    png = next((fixtures / "images").glob("*.png"))
    script = textwrap.dedent(f"""
        import os, torchspark
        tmp, spec = {str(tmp)!r}, {spec!r}
        png = open({str(png)!r}, "rb").read()
        for i in range(5):
            open({str(models / "m.json")!r}, "w").write(spec + " " * i)  # a new version
            with torchspark.NativeModel({str(models / "m.pt2")!r}) as m:
                assert m.score([png])["error"][0].as_py() is None
                assert os.listdir(tmp) == [], os.listdir(tmp)
        kept = torchspark.NativeModel({str(models / "m.pt2")!r})
        assert kept.score([png])["error"][0].as_py() is None
        print("LOADS", torchspark.NativeModel.load_count(), flush=True)
        if os.environ.get("HARD_EXIT"):
            os._exit(0)  # as Spark's Python workers end: no atexit handlers
        """)
    for hard in ("", "1"):
        env = {**os.environ, "TMPDIR": str(tmp), "HARD_EXIT": hard}
        p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "LOADS 5" in p.stdout, p.stdout + p.stderr
        assert os.listdir(tmp) == [], f"left in TMPDIR (hard exit: {bool(hard)})"
