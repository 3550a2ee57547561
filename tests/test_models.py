"""Built-in architectures (parameter counts from their papers, shapes) and the name registry."""

import pytest
import torch
from torch import nn

import njetify
from njetify.models import create_model, list_models, register_model
from njetify.models.registry import SOURCE_ATTR


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# He et al. 2016, Table 6 ("# params" column): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M for 10 classes.
PAPER_PARAMS = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet44": 0.66e6, "resnet56": 0.85e6, "resnet110": 1.7e6}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_cifar_resnet_params_match_he_et_al(name):
    m = create_model(name)
    # the paper rounds to two significant digits: stay within rounding of its figure
    tolerance = 0.05e6 if name == "resnet110" else 0.005e6
    assert abs(n_params(m) - PAPER_PARAMS[name]) <= tolerance


def test_cifar_resnet_exact_counts_and_structure():
    # exact counts of the option-A design (identity shortcuts carry no parameters)
    assert n_params(create_model("resnet20")) == 269_722
    assert n_params(create_model("resnet32")) == 464_154
    m = create_model("resnet110")
    assert n_params(m) == 1_727_962
    assert len(m.layer1) == len(m.layer2) == len(m.layer3) == 18
    assert not any(isinstance(x, nn.Conv2d) and x.kernel_size == (1, 1) for x in m.modules())


def test_option_a_shortcut_is_subsample_and_zero_pad():
    torch.manual_seed(0)
    block = create_model("resnet20").layer2[0]
    x = torch.randn(2, 16, 9, 9)  # odd size: ⌈9/2⌉ = 5, as the stride-2 conv gives
    sc = block.shortcut(x)
    assert sc.shape == (2, 32, 5, 5)
    assert torch.equal(sc[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(sc[:, 16:]) == 0
    assert block(x).shape == (2, 32, 5, 5)


def test_nin_and_allcnn_params():
    # NiN: layer widths of the authors' CIFAR-10 model; All-CNN-C: Springenberg et al. Table 2 (paper: "1.3M")
    assert n_params(create_model("nin")) == 966_986
    assert n_params(create_model("allcnn")) == 1_369_738
    assert n_params(create_model("nin", num_classes=100)) == 966_986 + 192 * 90 + 90


@pytest.mark.parametrize(
    "name,kwargs,shape_in,shape_out",
    [
        ("resnet20", {}, (2, 3, 32, 32), (2, 10)),
        ("resnet20", {"num_classes": 100, "in_chans": 1}, (1, 1, 20, 20), (1, 100)),
        ("nin", {"num_classes": 7}, (2, 3, 32, 32), (2, 7)),
        ("nin", {"batch_norm": True}, (2, 3, 16, 16), (2, 10)),
        ("allcnn", {"in_chans": 1}, (2, 1, 32, 32), (2, 10)),
        ("unet_small", {"num_classes": 3}, (1, 3, 32, 32), (1, 3, 32, 32)),
        ("unet_small", {"in_chans": 1, "width": 8}, (1, 1, 19, 23), (1, 2, 19, 23)),  # odd sizes
    ],
)
def test_output_shapes(name, kwargs, shape_in, shape_out):
    torch.manual_seed(0)
    m = create_model(name, **kwargs).eval()
    with torch.no_grad():
        assert m(torch.randn(shape_in)).shape == shape_out


def test_allcnn_feature_map_sizes_follow_the_paper():
    m = create_model("allcnn").eval()
    sizes = []
    hooks = [c.register_forward_hook(lambda _m, _i, o: sizes.append(o.shape[-1]))
             for c in m.modules() if isinstance(c, nn.Conv2d)]
    m(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == [32, 32, 16, 16, 16, 8, 6, 6, 6]  # "global averaging over 6×6"


def test_unet_small_structure():
    m = create_model("unet_small")
    assert n_params(m) == 1_883_202
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert [b[0].out_channels for b in m.down] == [64, 128, 256]
    assert all(isinstance(p, nn.MaxPool2d) and p.kernel_size == 2 for p in m.pools)


def test_create_model_records_its_source():
    m = create_model("nin", num_classes=5, dropout=0.1)
    assert getattr(m, SOURCE_ATTR) == {"name": "nin", "num_classes": 5, "in_chans": None, "kwargs": {"dropout": 0.1}}


def test_list_models():
    builtins = list_models(libraries=False)
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "nin", "allcnn", "unet_small",
            "deeplabv2_resnet101"} <= set(builtins)
    assert list_models("RESNET1*", libraries=False) == ["resnet110"]
    assert "tv:resnet50" in list_models("tv:resnet*")
    assert "tv:deeplabv3_resnet50" in list_models("tv:deeplab*")
    assert "timm:efficientnet_b0" in list_models("timm:efficientnet_b0*")
    assert "smp:Unet:resnet34" in list_models("smp:Unet:resnet3*")
    assert njetify.list_models is list_models and njetify.create_model is create_model


@pytest.mark.parametrize(
    "name,expect",
    [
        ("resnet33", "'resnet32'"),
        ("efficentnet_b0", "'efficientnet_b0'"),
        ("tv:resnet5", "'tv:resnet50'"),
        ("smp:Unte:resnet34", "'smp:Unet'"),
        ("smp:Unet:resnet3", "'resnet34'"),
        ("foo:bar", "timm:"),
    ],
)
def test_unknown_names_suggest(name, expect):
    with pytest.raises(ValueError, match="unknown") as err:
        create_model(name)
    assert expect in str(err.value)


@pytest.mark.parametrize(
    "kwargs,exc,text",
    [
        ({"num_classes": "10"}, TypeError, "num_classes"),
        ({"num_classes": 0}, TypeError, "num_classes"),
        ({"in_chans": True}, TypeError, "in_chans"),
        ({"pretrained": "yes"}, TypeError, "pretrained"),
        ({"pretrained": True}, ValueError, "weights=PATH"),
        ({"weights": 3}, TypeError, "weights"),
    ],
)
def test_argument_errors(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        create_model("resnet20", **kwargs)


def test_bad_depth_and_bad_builder_kwarg():
    from njetify.models.cifar_resnet import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)
    with pytest.raises(TypeError):
        create_model("resnet20", not_an_arg=1)


def test_register_model_rules():
    @register_model("_test_tiny", description="a tiny test net")
    def tiny(num_classes=None, in_chans=None, **kwargs):
        return nn.Conv2d(in_chans or 3, num_classes or 4, 3)

    m = create_model("_test_tiny", num_classes=2)
    assert m.out_channels == 2 and "_test_tiny" in list_models(libraries=False)
    with pytest.raises(ValueError, match="already registered"):
        register_model("_test_tiny")(lambda **kw: nn.Identity())
    with pytest.raises(ValueError, match="':'"):
        register_model("timm:x")
    from njetify.models.registry import _BUILTINS

    del _BUILTINS["_test_tiny"]


def test_library_models_build_offline():
    torch.manual_seed(0)
    m = create_model("timm:resnet18", num_classes=3, in_chans=1).eval()
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    m = create_model("resnet18", num_classes=3)  # bare timm name
    assert type(m).__module__.startswith("timm")
    m = create_model("tv:resnet18", num_classes=4, in_chans=1).eval()
    assert m.conv1.in_channels == 1 and m(torch.randn(1, 1, 32, 32)).shape == (1, 4)
    m = create_model("tv:lraspp_mobilenet_v3_large", num_classes=2).eval()  # no backbone download
    assert m(torch.randn(1, 3, 32, 32))["out"].shape == (1, 2, 32, 32)
    m = create_model("smp:Unet:resnet18", num_classes=2, in_chans=1).eval()
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    assert getattr(m, SOURCE_ATTR)["name"] == "smp:Unet:resnet18"


def test_tv_pretrained_with_other_num_classes_is_refused():
    with pytest.raises(ValueError, match="num_classes=10 needs pretrained=False"):
        create_model("tv:resnet18", pretrained=True, num_classes=10)
