"""DeepLab v2 ResNet-101 in kazuto1011/deeplab-pytorch's layout: keys, shapes, checkpoint classes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from njetify.models.deeplabv2 import MSC, check_checkpoint_classes, deeplabv2_resnet101


def _cbr_keys(prefix: str, in_ch: int, out_ch: int, k: int) -> dict[str, tuple]:
    """kazuto1011's _ConvBnReLU: ``.conv.weight`` and BatchNorm ``.bn.*``."""
    return {
        f"{prefix}.conv.weight": (out_ch, in_ch, k, k),
        f"{prefix}.bn.weight": (out_ch,),
        f"{prefix}.bn.bias": (out_ch,),
        f"{prefix}.bn.running_mean": (out_ch,),
        f"{prefix}.bn.running_var": (out_ch,),
        f"{prefix}.bn.num_batches_tracked": (),
    }


def kazuto_keys(num_classes: int) -> dict[str, tuple]:
    """The state_dict of kazuto1011's ``DeepLabV2_ResNet101_MSC`` written out from its structure."""
    keys = _cbr_keys("base.layer1.conv1", 3, 64, 7)
    stages = [(3, 64, 256), (4, 256, 512), (23, 512, 1024), (3, 1024, 2048)]
    for li, (n, cin, cout) in enumerate(stages, start=2):
        mid = cout // 4
        for b in range(1, n + 1):
            p = f"base.layer{li}.block{b}"
            keys |= _cbr_keys(f"{p}.reduce", cin if b == 1 else cout, mid, 1)
            keys |= _cbr_keys(f"{p}.conv3x3", mid, mid, 3)
            keys |= _cbr_keys(f"{p}.increase", mid, cout, 1)
            if b == 1:
                keys |= _cbr_keys(f"{p}.shortcut", cin, cout, 1)
    for i in range(4):
        keys[f"base.aspp.c{i}.weight"] = (num_classes, 2048, 3, 3)
        keys[f"base.aspp.c{i}.bias"] = (num_classes,)
    return keys


@pytest.mark.parametrize("num_classes", [21, 182])
@pytest.mark.parametrize("msc", [False, True])
def test_kazuto_state_dict_loads_strictly(num_classes, msc):
    torch.manual_seed(0)
    want = kazuto_keys(num_classes)
    assert len(want) == 632  # 104 conv+BN pairs × 6 + 4 × (weight, bias)
    sd = {k: torch.randn(s) if s else torch.tensor(0) for k, s in want.items()}
    model = deeplabv2_resnet101(num_classes=num_classes, msc=msc)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == want
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.base.aspp.c3.weight, sd["base.aspp.c3.weight"])


def test_old_checkpoint_without_num_batches_tracked_loads():
    sd = {k: torch.zeros(s) for k, s in kazuto_keys(21).items() if not k.endswith("num_batches_tracked")}
    assert len(sd) == 528
    deeplabv2_resnet101().load_state_dict(sd, strict=True)


def test_structure_matches_reference():
    m = deeplabv2_resnet101()
    base = m.base
    assert [n for n, _ in base.named_children()] == ["layer1", "layer2", "layer3", "layer4", "layer5", "aspp"]
    pool = base.layer1.pool
    assert isinstance(pool, nn.MaxPool2d) and pool.ceil_mode and pool.kernel_size == 3 and pool.stride == 2
    bn = base.layer1.conv1.bn
    assert bn.eps == 1e-5 and bn.momentum == pytest.approx(0.001)
    # stride on the 1x1 reduce conv of layer3's first block; layer4/5 dilated 2/4
    assert base.layer3.block1.reduce.conv.stride == (2, 2)
    assert base.layer4.block1.reduce.conv.stride == (1, 1) and base.layer4.block5.conv3x3.conv.dilation == (2, 2)
    assert base.layer5.block3.conv3x3.conv.dilation == (4, 4)
    rates = [base.aspp.get_submodule(f"c{i}").dilation[0] for i in range(4)]
    assert rates == [6, 12, 18, 24]
    assert all(base.aspp.get_submodule(f"c{i}").padding[0] == r for i, r in enumerate(rates))
    assert sum(p.numel() for p in m.parameters()) == 44_048_532


def test_forward_shapes_plain_msc_upsample():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 33, 33)
    model = deeplabv2_resnet101(num_classes=5).eval()
    with torch.no_grad():
        assert model(x).shape == (1, 5, 5, 5)  # OS 8 with ceil_mode pooling: 33 → 17 → 9 → 5
        assert MSC(model.base).eval()(x).shape == (1, 5, 5, 5)
        assert MSC(model.base, (), upsample=True).eval()(x).shape == (1, 5, 33, 33)
    gray = deeplabv2_resnet101(num_classes=5, in_chans=1, msc=True)
    assert gray.base.layer1.conv1.conv.weight.shape == (64, 1, 7, 7) and gray.scales == (0.5, 0.75)


def test_msc_fuses_by_max_and_return_all():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 3, 3, 4, 1))  # a tiny stand-in, OS 8
    m = MSC(base, return_all=True).train()
    x = torch.randn(1, 3, 33, 33)
    full, half, three_quarter, fused = m(x)
    assert full.shape == fused.shape == (1, 3, 5, 5) and half.shape[-1] < three_quarter.shape[-1] < 5
    resize = [torch.nn.functional.interpolate(p, size=(5, 5), mode="bilinear", align_corners=False)
              for p in (half, three_quarter)]
    torch.testing.assert_close(fused, torch.stack([full, *resize]).max(0)[0])
    assert m.eval()(x).shape == (1, 3, 5, 5)  # eval: the fused logits only


def test_check_checkpoint_classes():
    sd = {"base.aspp.c0.weight": torch.zeros(182, 2048, 3, 3)}
    assert check_checkpoint_classes(sd, 182) == 182
    assert check_checkpoint_classes({"module.base.aspp.c0.weight": torch.zeros(21, 8, 3, 3)}, 21) == 21
    assert check_checkpoint_classes({"fc.weight": torch.zeros(3, 3)}, 21) is None
    with pytest.raises(ValueError, match=r"182 classes.*num_classes=21"):
        check_checkpoint_classes(sd, 21)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match="num_classes"):
        deeplabv2_resnet101(num_classes=bad)
    with pytest.raises(ValueError, match="atrous_rates"):
        deeplabv2_resnet101(atrous_rates=(6, 0))
