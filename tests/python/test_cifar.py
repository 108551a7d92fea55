"""torchspark.cifar on synthetic files of both binary layouts, written here with numpy (the
layouts of https://www.cs.toronto.edu/~kriz/cifar.html; nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import pytest

from torchspark import cifar

RNG = np.random.default_rng(16)


def images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def write(path, ims: np.ndarray, *labels: np.ndarray) -> None:
    """Records as the releases store them: the label bytes, then the image as CHW planes."""
    planes = ims.transpose(0, 3, 1, 2).reshape(len(ims), -1)
    np.concatenate([*(lab.reshape(-1, 1) for lab in labels), planes], axis=1).astype(
        np.uint8
    ).tofile(path)


def cifar100_labels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine labels and their superclasses (a fixed fine -> coarse map, as in the release)."""
    fine = RNG.integers(0, 100, n, dtype=np.uint8)
    return (fine // 5).astype(np.uint8), fine


def test_cifar100_batch_round_trips_pixels_and_both_labels(tmp_path):
    ims = images(7)
    coarse, fine = cifar100_labels(7)
    write(tmp_path / "train.bin", ims, coarse, fine)
    rec = cifar.read_records(tmp_path / "train.bin", "cifar-100")
    np.testing.assert_array_equal(rec["images"], ims)
    np.testing.assert_array_equal(rec["coarse"], coarse)
    np.testing.assert_array_equal(rec["fine"], fine)
    x, y = cifar.read_batch(tmp_path / "train.bin", "cifar-100")
    np.testing.assert_array_equal(x, ims)
    np.testing.assert_array_equal(y, fine)  # fine by default: the 100 classes
    _, yc = cifar.read_batch(tmp_path / "train.bin", "cifar-100", label="coarse")
    np.testing.assert_array_equal(yc, coarse)
    assert x.dtype == np.uint8 and x.flags.c_contiguous


def test_load_detects_each_layout_from_the_folder_files(tmp_path):
    c10, c100 = tmp_path / "cifar-10-batches-bin", tmp_path / "cifar-100-binary"
    c10.mkdir(), c100.mkdir()
    tr10, te10 = images(6), images(2)
    lab10 = RNG.integers(0, 10, 8, dtype=np.uint8)
    write(c10 / "data_batch_1.bin", tr10[:3], lab10[:3])
    write(c10 / "data_batch_2.bin", tr10[3:], lab10[3:6])
    write(c10 / "test_batch.bin", te10, lab10[6:])
    tr100, te100 = images(5), images(3)
    coarse, fine = cifar100_labels(8)
    write(c100 / "train.bin", tr100, coarse[:5], fine[:5])
    write(c100 / "test.bin", te100, coarse[5:], fine[5:])
    (c100 / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)) + "\n")
    (c100 / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)) + "\n")

    assert cifar.detect_layout(c10) == "cifar-10" and cifar.detect_layout(c100) == "cifar-100"
    (xtr, ytr), (xte, yte) = cifar.load(c10)
    np.testing.assert_array_equal(xtr, tr10)
    np.testing.assert_array_equal(np.concatenate([ytr, yte]), lab10)
    np.testing.assert_array_equal(xte, te10)
    (xtr, ytr), (xte, yte) = cifar.load(c100)
    np.testing.assert_array_equal(xtr, tr100)
    np.testing.assert_array_equal(xte, te100)
    np.testing.assert_array_equal(np.concatenate([ytr, yte]), fine)
    (_, ytr), _ = cifar.load(c100, layout="cifar-100", label="coarse")
    np.testing.assert_array_equal(ytr, coarse[:5])
    assert cifar.label_names(c10) == cifar.LABELS
    assert cifar.label_names(c100)[99] == "f99"
    assert cifar.label_names(c100, label="coarse")[19] == "c19"


@pytest.mark.parametrize(
    ("written", "read_as"), [("cifar-100", "cifar-10"), ("cifar-10", "cifar-100")]
)
def test_file_read_with_the_other_layout_names_file_layout_and_record_size(
    tmp_path, written, read_as
):
    path = tmp_path / "batch.bin"
    if written == "cifar-100":
        write(path, images(5), *cifar100_labels(5))
    else:
        write(path, images(5), RNG.integers(0, 10, 5, dtype=np.uint8))
    with pytest.raises(ValueError) as e:
        cifar.read_batch(path, read_as)
    msg = str(e.value)
    assert str(path) in msg and f"read as {read_as}" in msg
    assert "not a whole number of records" in msg and f"divides into {written} records" in msg


def test_other_layout_of_a_size_both_divide_fails_on_label_range(tmp_path):
    # 3,073 x 3,074 bytes is whole records in both layouts: the label bytes catch it.
    c100, c10 = tmp_path / "c100.bin", tmp_path / "c10.bin"
    write(c100, images(3073), *cifar100_labels(3073))
    write(c10, images(3074), RNG.integers(0, 10, 3074, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"c100.bin read as cifar-10 .* out of range 0-9"):
        cifar.read_batch(c100, "cifar-10")
    with pytest.raises(ValueError, match=r"c10.bin read as cifar-100 .* out of range 0-(19|99)"):
        cifar.read_batch(c10, "cifar-100")


def test_cifar100_fine_label_under_two_superclasses_is_rejected(tmp_path):
    path = tmp_path / "test.bin"
    write(path, images(3), np.array([1, 2, 1], np.uint8), np.array([5, 5, 7], np.uint8))
    with pytest.raises(ValueError, match=r"test.bin read as cifar-100.*fine label 5 .*\[1, 2\]"):
        cifar.read_batch(path, "cifar-100")


def test_empty_or_ambiguous_inputs_raise_with_the_path(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.bin read as cifar-10 .*empty"):
        cifar.read_batch(tmp_path / "empty.bin")
    with pytest.raises(FileNotFoundError, match="no CIFAR release"):
        cifar.load(tmp_path)
    write(tmp_path / "train.bin", images(1), *cifar100_labels(1))
    write(tmp_path / "data_batch_1.bin", images(1), np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="both cifar-10 and cifar-100"):
        cifar.load(tmp_path)
    with pytest.raises(ValueError, match="unknown CIFAR layout 'cifar-1000'"):
        cifar.read_batch(tmp_path / "train.bin", "cifar-1000")
    (tmp_path / "fine_label_names.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="fine_label_names.txt: 2 names"):
        cifar.label_names(tmp_path, "cifar-100")
