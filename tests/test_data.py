"""njetify.data: datasets by name, offline errors, synthetic MNIST tasks, resumable loaders."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from njetify.data import (
    IGNORE_INDEX,
    MnistMultiscaleSeg,
    ResumableSampler,
    dataset_info,
    dataset_names,
    get_dataset,
    make_loaders,
)

DATA = "/work/shared/data"
needs_mnist = pytest.mark.skipif(not Path(DATA, "MNIST", "raw").is_dir(), reason="MNIST not at /work/shared/data")


@needs_mnist
def test_mnist_by_name():
    ds = get_dataset("mnist", "test", DATA)
    x, y = ds[0]
    assert len(ds) == 10000 and x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 7
    assert abs(float(x.mean())) < 1.5  # normalised
    info = dataset_info("mnist")
    assert (info.num_classes, info.in_channels, info.input_size, info.task) == (10, 1, (28, 28), "classification")


@pytest.mark.parametrize("name, where", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("svhn", "test_32x32.mat"), ("fashion-mnist", "FashionMNIST/raw")])
def test_offline_error_says_where_to_put_files(tmp_path, name, where):
    with pytest.raises(FileNotFoundError) as e:
        get_dataset(name, "test", tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and where in msg and "download=True" in msg


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="name must be one of .*'mnist-multiscale-seg'.*got 'imagenet'"):
        get_dataset("imagenet")
    with pytest.raises(ValueError, match="split must be one of 'train', 'test', 'val', got 'dev'"):
        get_dataset("mnist", "dev", DATA)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        get_dataset("folder:/nonexistent/images")
    assert "folder:PATH" in dataset_names() and "svhn" in dataset_names()


def test_image_folder(tmp_path):
    for split in ("train", "val"):
        for cls, color in (("cat", 40), ("dog", 200)):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 30), (color, i, 0)).save(d / f"{i}.png")
    tr = get_dataset(f"folder:{tmp_path}", "train", image_size=24)
    va = get_dataset(f"folder:{tmp_path}", "val", image_size=24)
    assert tr.classes == ["cat", "dog"] and len(tr) == len(va) == 4
    assert tr[0][0].shape == va[3][0].shape == (3, 24, 24) and va[3][1] == 1
    assert dataset_info(f"folder:{tmp_path}", tr, image_size=24).num_classes == 2


@needs_mnist
@pytest.mark.parametrize("scale, size", [(1, 28), (1.5, 42), (2, 56), (4, 112)])
def test_mnist_resized(scale, size):
    ds = get_dataset("mnist-resized", "test", DATA, scale=scale, normalize=False)
    x, y = ds[0]
    assert x.shape == (1, size, size) and y == 7
    ref = get_dataset("mnist", "test", DATA, normalize=False)[0][0]
    assert x.sum() / scale**2 == pytest.approx(float(ref.sum()), rel=0.03)  # same digit, area × s²
    assert dataset_info("mnist-resized", scale=scale).input_size == (size, size)


@needs_mnist
def test_multiscale_seg_labels_and_layout():
    ds = get_dataset("mnist-multiscale-seg", "train", DATA, scales=(1, 2), length=20, seed=5)
    assert ds.canvas == 112 and len(ds) == 20
    x, t = ds[3]
    assert x.shape == (1, 112, 112) and t.shape == (112, 112) and t.dtype == torch.int64
    img = x[0]
    assert torch.equal(t == 0, img == 0)  # background exactly where the intensity is 0
    assert bool(((t >= 1) & (t <= 10)).eq(img > 0.2).all())  # digit class + 1 above 0.2
    rim = (img > 0) & (img <= 0.2)
    assert rim.any() and bool((t[rim] == IGNORE_INDEX).all())
    # one digit per quadrant, each wholly inside it
    for qy in (0, 56):
        for qx in (0, 56):
            labels = t[qy : qy + 56, qx : qx + 56].unique().tolist()
            assert len([v for v in labels if 1 <= v <= 10]) == 1


@needs_mnist
def test_multiscale_seg_deterministic_and_scales():
    a = get_dataset("mnist-multiscale-seg", "train", DATA, scales=4, length=4, seed=1)
    b = get_dataset("mnist-multiscale-seg", "train", DATA, scales=4, length=4, seed=1)
    c = get_dataset("mnist-multiscale-seg", "train", DATA, scales=4, length=4, seed=2)
    assert a.canvas == 224
    assert torch.equal(a[2][0], b[2][0]) and torch.equal(a[2][1], b[2][1])
    first = a[3][0]
    torch.rand(10)  # the global RNG does not matter
    assert torch.equal(a[3][0], first)
    assert not torch.equal(a[2][0], c[2][0])
    # a digit at scale 4 spans more than 28 px
    t = a[0][1]
    ys = ((t > 0) & (t < IGNORE_INDEX))[:112, :112].any(1).nonzero()
    assert int(ys.max() - ys.min()) > 40
    v = get_dataset("mnist-multiscale-seg", "val", DATA, scales=1, length=3)
    assert v.canvas == 56 and not torch.equal(v[0][0], get_dataset(
        "mnist-multiscale-seg", "train", DATA, scales=1, length=3)[0][0])
    with pytest.raises(ValueError, match="canvas must be >= 224"):
        MnistMultiscaleSeg("train", DATA, scales=(1, 4), canvas=100)
    with pytest.raises(ValueError, match="probs must be 2 non-negative weights"):
        MnistMultiscaleSeg("train", DATA, scales=(1, 2), probs=(1, 2, 3))
    with pytest.raises(ValueError, match="scales must be a positive finite number, got -1"):
        MnistMultiscaleSeg("train", DATA, scales=(1, -1))


def test_sampler_shards_cover_the_global_batch_and_skip():
    single = list(ResumableSampler(50, seed=3, world_size=1))
    r0 = list(ResumableSampler(50, seed=3, rank=0, world_size=2))
    r1 = list(ResumableSampler(50, seed=3, rank=1, world_size=2))
    assert len(r0) == len(r1) == 25
    for b in range(3):  # global batch 8 = two local batches of 4
        assert sorted(r0[4 * b : 4 * b + 4] + r1[4 * b : 4 * b + 4]) == sorted(single[8 * b : 8 * b + 8])
    s = ResumableSampler(50, seed=3)
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != single and sorted(e1) == list(range(50))
    s.skip(20)
    assert list(s) == e1[20:] and len(s) == 30
    ev = [list(ResumableSampler(7, shuffle=False, drop_last=False, rank=r, world_size=2)) for r in (0, 1)]
    assert ev == [[0, 2, 4, 6], [1, 3, 5]]


def test_make_loaders():
    ds = torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10))
    tr, va = make_loaders(ds, ds, 4, seed=0)
    assert len(tr) == 2 and len(va) == 3  # training drops the last partial batch
    assert [int(y) for _, yb in va for y in yb] == list(range(10))
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        make_loaders(ds, None, 0)


def _folder(root, splits=("train", "val"), n=3, mode="RGB", classes=("a", "b", "c")):
    for split in splits:
        for k, cls in enumerate(classes):
            d = root / split / cls if split else root / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new(mode, (20, 16), (60 * k + i,) * (1 if mode == "L" else 3)).save(d / f"{i}.png")
    return root


def test_folder_without_val_split_is_refused_unless_held_out(tmp_path):
    root = _folder(tmp_path, splits=("",), n=10)
    with pytest.raises(ValueError, match=r"no val/ or test/ sub-folder.*training accuracy.*val_split"):
        get_dataset(f"folder:{root}", "val", image_size=8)
    tr = get_dataset(f"folder:{root}", "train", image_size=8, val_split=0.2)
    va = get_dataset(f"folder:{root}", "val", image_size=8, val_split=0.2)
    assert len(tr) == 24 and len(va) == 6 and not set(tr.indices) & set(va.indices)
    assert tr.classes == va.classes == ["a", "b", "c"]
    assert get_dataset(f"folder:{root}", "val", image_size=8, val_split=0.2).indices == va.indices  # a fixed draw


def test_grayscale_folder_loads_one_channel(tmp_path):
    root = _folder(tmp_path, mode="L")
    ds = get_dataset(f"folder:{root}", "train", image_size=8)
    assert ds.channels == 1 and ds[0][0].shape == (1, 8, 8)
    assert dataset_info(f"folder:{root}", ds, image_size=8).in_channels == 1
    assert get_dataset(f"folder:{root}", "train", image_size=8, channels=3)[0][0].shape == (3, 8, 8)


def test_corrupt_image_is_named_before_any_work(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "b" / "broken.png").write_bytes(b"\x89PNG not an image")
    with pytest.raises(ValueError, match=r"1 file\(s\) are not readable images: .*broken\.png"):
        get_dataset(f"folder:{root}", "train", image_size=8)


def test_flat_folder_is_unlabelled_calibration_data(tmp_path):
    from njetify.data import UnlabelledImages

    for i in range(5):
        Image.new("RGB", (20, 16), (i, 0, 0)).save(tmp_path / f"{i}.jpg")
    with pytest.raises(ValueError, match="no class sub-folders: fine-tuning needs labels"):
        get_dataset(f"folder:{tmp_path}", "train", image_size=8)
    ds = UnlabelledImages(tmp_path, image_size=8)
    assert len(ds) == 5 and ds[0][0].shape == (3, 8, 8) and ds[0][1] == -1


def test_limit_draws_a_fixed_subset(tmp_path):
    from njetify.data import limit

    ds = get_dataset(f"folder:{_folder(tmp_path, n=4)}", "train", image_size=8)
    a, b = limit(ds, 5), limit(ds, 5)
    assert len(a) == 5 and a.indices == b.indices and a.classes == ds.classes and limit(ds, 100) is ds


def test_njetify_data_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NJETIFY_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        get_dataset("mnist", "train")
