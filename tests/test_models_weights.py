"""weights=: local checkpoints with wrappers and prefixes, reports, and clear errors."""

import warnings

import pytest
import torch
from safetensors.torch import save_file

from njetify.models import create_model, load_weights, read_state_dict


@pytest.fixture
def trained():
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3, "best_acc": 0.9},
        lambda sd: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}},
        lambda sd: {f"base.{k}": v for k, v in sd.items()},  # e.g. a wrapper's sub-module name
    ],
    ids=["plain", "state_dict+module", "model+compile", "extra-prefix"],
)
def test_weights_load_through_wrappers(tmp_path, trained, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(trained.state_dict()), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean load must not warn
        model = create_model("resnet20", weights=path)
    assert _same(model, trained)


def test_weights_safetensors(tmp_path, trained):
    path = tmp_path / "ckpt.safetensors"
    save_file(trained.state_dict(), str(path))
    assert _same(create_model("resnet20", weights=str(path)), trained)


def test_head_of_other_size_is_skipped_and_reported(tmp_path, trained):
    path = tmp_path / "ckpt.pt"
    torch.save(trained.state_dict(), path)
    with pytest.warns(UserWarning, match=r"2 skipped for a shape mismatch: fc.weight \(10, 64\) vs model \(5, 64\)"):
        model = create_model("resnet20", num_classes=5, weights=path)
    assert torch.equal(model.conv1.weight, trained.conv1.weight)
    report = load_weights(model, path)
    assert not report.ok and report.missing == [] and report.unexpected == []
    assert [m[0] for m in report.mismatched] == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="strict"):
        load_weights(model, path, strict=True)


def test_missing_and_unexpected_keys_reported(trained):
    sd = trained.state_dict()
    sd.pop("conv1.weight")
    sd["extra.weight"] = torch.zeros(3)
    model = create_model("resnet20")
    report = load_weights(model, sd)
    assert report.missing == ["conv1.weight"] and report.unexpected == ["extra.weight"]
    assert "1 missing in the checkpoint: conv1.weight" in report.summary()


def test_old_checkpoint_without_bn_counters_is_clean(trained):
    sd = {k: v for k, v in trained.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert load_weights(create_model("resnet20"), sd).ok


def test_unrelated_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(create_model("nin").state_dict(), path)
    with pytest.raises(ValueError, match="no tensor of .* matches CifarResNet"):
        create_model("resnet20", weights=path)


def test_corrupt_and_odd_files(tmp_path, trained):
    good = tmp_path / "good.pth"
    torch.save(trained.state_dict(), good)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read .*truncated.pth"):
        read_state_dict(bad)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="cannot read"):
        read_state_dict(bad_st)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_state_dict(tmp_path / "nope.pth")
    odd = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "weights": [1, 2]}, odd)
    with pytest.raises(ValueError, match="not a state_dict: entry 'epoch'"):
        read_state_dict(odd)


def kazuto_deeplabv2_keys(num_classes=21, bn_counters=True):
    """Key names and shapes of kazuto1011/deeplab-pytorch's DeepLabV2_ResNet101_MSC, written out from
    its libs/models (resnet.py: _Stem, _ResLayer of _Bottleneck reduce/conv3x3/increase/shortcut;
    deeplabv2.py: ASPP c0..c3; msc.py: the ``base`` wrapper), independently of njetify's code."""
    shapes = {}

    def conv_bn(prefix, cout, cin, k):
        shapes[f"{prefix}.conv.weight"] = (cout, cin, k, k)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn.{name}"] = (cout,)
        if bn_counters:
            shapes[f"{prefix}.bn.num_batches_tracked"] = ()

    conv_bn("base.layer1.conv1", 64, 3, 7)
    cin = 64
    for layer, (n, cout) in enumerate(zip((3, 4, 23, 3), (256, 512, 1024, 2048), strict=True), start=2):
        mid = cout // 4
        for b in range(1, n + 1):
            p = f"base.layer{layer}.block{b}"
            conv_bn(f"{p}.reduce", mid, cin if b == 1 else cout, 1)
            conv_bn(f"{p}.conv3x3", mid, mid, 3)
            conv_bn(f"{p}.increase", cout, mid, 1)
            if b == 1:
                conv_bn(f"{p}.shortcut", cout, cin, 1)
        cin = cout
    for i in range(4):
        shapes[f"base.aspp.c{i}.weight"] = (num_classes, 2048, 3, 3)
        shapes[f"base.aspp.c{i}.bias"] = (num_classes,)
    return shapes


def _synthetic(shapes):
    torch.manual_seed(0)
    sd = {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
          for k, s in shapes.items()}
    sd["base.aspp.c3.weight"].normal_()
    sd["base.layer4.block7.conv3x3.conv.weight"].normal_()
    return sd


@pytest.mark.parametrize("msc", [False, True])
def test_kazuto_deeplabv2_checkpoint_loads_without_missing_or_unexpected_keys(tmp_path, msc):
    sd = _synthetic(kazuto_deeplabv2_keys())
    path = tmp_path / "deeplabv2_resnet101_msc-vocaug.pth"
    torch.save(sd, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_model("deeplabv2_resnet101", msc=msc, weights=path)
    report = load_weights(model, path)
    assert report.ok and report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.mapping == "keys used as they are"
    assert torch.equal(model.base.aspp.c3.weight, sd["base.aspp.c3.weight"])
    assert torch.equal(model.base.layer4.block7.conv3x3.conv.weight, sd["base.layer4.block7.conv3x3.conv.weight"])


def test_kazuto_checkpoint_variants():
    model = create_model("deeplabv2_resnet101")
    old = _synthetic(kazuto_deeplabv2_keys(bn_counters=False))  # Caffe-converted init: no BN counters
    assert load_weights(model, old).ok
    wrapped = {"state_dict": {f"module.{k}": v for k, v in old.items()}}  # saved from DataParallel
    assert load_weights(model, wrapped).ok
    coco = _synthetic(kazuto_deeplabv2_keys(num_classes=182))
    report = load_weights(model, coco)  # COCO-Stuff head into a 21-class model: head skipped, reported
    assert sorted(m[0] for m in report.mismatched) == [f"base.aspp.c{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    assert report.missing == [] and report.unexpected == []


def test_create_model_rejects_checkpoint_with_other_classes(tmp_path):
    """A COCO-Stuff (182-class) DeepLab v2 checkpoint asked for as a 21-class model: one clear error."""
    path = tmp_path / "coco.pth"
    torch.save({f"base.aspp.c{i}.weight": torch.zeros(182, 2048, 3, 3) for i in range(4)}, path)
    with pytest.raises(ValueError, match=r"predicts 182 classes, but num_classes=21.*pass num_classes=182"):
        create_model("deeplabv2_resnet101", weights=path)
    with pytest.raises(ValueError, match=r"predicts 182 classes, but num_classes=21"):
        create_model("deeplabv2_resnet101", num_classes=21, weights=path)
