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
