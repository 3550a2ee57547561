"""Every allowed value and default in one place (njetify.options), every recipe key through one resolver."""

import math

import pytest
from torch import nn

import njetify
from njetify import options
from njetify.cli.calibration import count_convertible
from njetify.recipes import Recipe, RecipeError, Rule, load_recipe
from njetify.recipes.validate import CHECKS

from surgery_models import TinyResNet


def test_choices_come_from_options():
    from njetify.calibration import MAX_FIT_ERROR
    from njetify.train import config, optim

    assert optim.OPTIMIZERS is options.OPTIMIZERS and optim.SCHEDULES is options.SCHEDULES
    assert config.AMP_MODES is options.AMP_MODES
    assert Recipe().max_fit_error == MAX_FIT_ERROR == options.MAX_FIT_ERROR
    assert load_recipe("default").max_fit_error == options.MAX_FIT_ERROR  # the YAML says the same
    for key, allowed in (("finetune.optimizer", options.OPTIMIZERS), ("finetune.schedule", options.SCHEDULES),
                         ("finetune.amp", options.AMP_MODES)):
        assert all(CHECKS[key](v) is None for v in allowed) and CHECKS[key]("nope") is not None


@pytest.mark.parametrize("value, ok", [("auto", True), (4, True), (0.5, True), (0, False), (-1.0, False),
                                       (math.inf, False), (math.nan, False), (True, False), ("big", False)])
def test_one_r_rule(value, ok):
    """options.r_problem answers for the recipe check, check_r (convert) and --subsample-r; SafeSubsample
    takes the same values (its own words: "r must be a positive number")."""
    assert (options.r_problem(value) is None) is ok
    assert (CHECKS["subsample.r"](value) is None) is ok
    if ok:
        options.check_r(value)
        njetify.SafeSubsample(None, stride=2, r=value)
    else:
        with pytest.raises(ValueError, match="'auto' or a positive number"):
            options.check_r(value)
        with pytest.raises((TypeError, ValueError), match="r must be a positive"):
            njetify.SafeSubsample(None, stride=2, r=value)


def test_rule_matching_is_one_function():
    rec = Recipe(rules=[Rule(match="layer1.*", order=2), Rule(match="*.conv2", skip=True), Rule(match="x?", order=1)])
    assert [r.match for r in rec.rules_for("layer1.0.conv2")] == ["layer1.*", "*.conv2"]
    assert rec.settings_for("layer1.0.conv2").skip and rec.settings_for("layer1.0.conv2").order == 2
    assert rec.rules_for("xy") == [rec.rules[2]] and not rec.rules[2].matches("Xy")  # case-sensitive


def test_convert_forwards_every_recipe_key():
    """Any recipe key is a keyword of convert (one resolver); None is 'not given'; a typo names the closest key."""
    net = TinyResNet()
    with pytest.warns(UserWarning, match="reverted every converted layer"):
        _, kept = njetify.convert(net, max_fit_error=0.0)
    assert kept.converted == 0 and kept.calibration["reverted"]
    _, fixed = njetify.convert(net, sigma_init=0.8, max_fit_error=math.inf, subsample="keep")
    assert {r.sigma0 for r in fixed.rows if r.kind == "conv" and r.action == "converted"} == {0.8}
    _, default = njetify.convert(net, order=None, max_fit_error=None)
    assert default.recipe["order"] == 3
    with pytest.raises(RecipeError, match="did you mean 'sigma_init'"):
        njetify.convert(net, sigma_inti=0.8)


def test_cli_layer_count_is_the_conv_pass_rule():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, (3, 1)),
                        nn.ConvTranspose2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 2))
    _, report = njetify.convert(net, max_fit_error=math.inf)
    assert count_convertible(net) == report.converted == 3  # 3x3, 3x1 (one σ per axis), transposed 3x3


def test_calibration_defaults_come_from_options():
    """Each solver has its own named constant, and every engine default is options'."""
    import dataclasses

    from njetify import fit
    from njetify.calibration import CalibrationOptions, iterative, ridge, sigma_search
    from njetify.recipes import CalibrationConfig

    assert not any(hasattr(m, "RIDGE") for m in (fit, ridge, iterative))
    assert options.OUTPUT_MATCHING_RIDGE == 1e-3 and options.MOMENTS_RIDGE == 1e-6
    engine = CalibrationOptions()
    expected = {"max_samples": options.CALIBRATION_MAX_SAMPLES, "ridge": options.OUTPUT_MATCHING_RIDGE,
                "search_fraction": options.SIGMA_SEARCH_FRACTION, "sigma_tolerance": options.SIGMA_TOLERANCE,
                "search_max_dim": options.SEARCH_MAX_DIM, "direct_max_dim": options.DIRECT_MAX_DIM,
                "design_bytes": options.DESIGN_BYTES, "max_iter": options.PCG_MAX_ITER}
    assert {k: getattr(engine, k) for k in expected} == expected
    assert Recipe().search_max_dim == options.SEARCH_MAX_DIM
    assert sigma_search.FRACTIONS is options.SIGMA_FRACTIONS
    block = CalibrationConfig()
    assert all(getattr(block, f.name) == getattr(engine, f.name)
               for f in dataclasses.fields(block) if f.name != "sigma_fractions")
