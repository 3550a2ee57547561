"""Recipes: built-ins, YAML files, validation errors, keyword overrides, rules checked against a model."""

import dataclasses
import textwrap

import pytest
import torch
from torch import nn

import njetify
from njetify.recipes import (
    Recipe,
    RecipeError,
    Rule,
    list_recipes,
    load_recipe,
    recipe_source,
    recipe_to_dict,
    recipe_to_yaml,
    resolve_recipe,
    validate_rules_against,
)
from njetify.recipes.validate import CHECKS

BUILTINS = [
    "default", "paper-allcnn", "paper-deeplabv2-aspp", "paper-efficientnet", "paper-nin",
    "paper-resnet110", "paper-resnet32", "paper-unet-order2", "paper-unet-order4",
]


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_list_recipes():
    assert list_recipes() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtins_load_and_round_trip(name, tmp_path):
    rec = load_recipe(name)
    assert rec.name == name and rec.description
    assert recipe_source(rec) == f"built-in recipe {name!r}"
    again = load_recipe(write(tmp_path, recipe_to_yaml(rec)))
    assert again == rec


def test_default_recipe_equals_schema_defaults():
    rec = load_recipe("default")
    assert dataclasses.replace(rec, description="") == Recipe(name="default")


def test_paper_recipes_settings():
    r110 = load_recipe("paper-resnet110")
    assert (r110.order, r110.subsample.mode) == (2, "keep")
    eff = load_recipe("paper-efficientnet")
    assert (eff.order, eff.subsample.mode, eff.sigma_init) == (2, "keep", "kernel")
    dl = load_recipe("paper-deeplabv2-aspp")
    assert (dl.aspp.tie, dl.convs, dl.order, dl.subsample.mode) == (True, False, 3, "keep")
    assert load_recipe("paper-unet-order2").order == 2 and load_recipe("paper-unet-order4").order == 4
    assert load_recipe("paper-unet-order4").finetune == load_recipe("paper-unet-order2").finetune
    nin = load_recipe("paper-nin")
    assert (nin.order, nin.sigma_init, nin.subsample.where, nin.subsample.r) == (4, 1.0, "every_layer", 4.0)
    # the official code's CIFAR schedule: SGD 0.1, ×0.1 at epochs 30 and 60 of 90
    ft = nin.finetune
    assert (ft.optimizer, ft.lr, ft.momentum, ft.weight_decay, ft.epochs, ft.schedule, ft.step_size, ft.gamma) == (
        "sgd", 0.1, 0.9, 5e-4, 90, "step", 30, 0.1)
    r32 = load_recipe("paper-resnet32")
    assert (r32.subsample.mode, r32.subsample.where, r32.finetune) == ("safe", "original", ft)


def test_user_file_with_base_and_rules(tmp_path):
    path = write(tmp_path, """
        base: paper-resnet32
        order: 2
        finetune: {lr: 0.05}
        rules:
          - {match: "conv1", skip: true}
          - {match: "layer3.*", order: 4, sigma_init: 2}
    """, "mine.yaml")
    rec = load_recipe(path)
    assert rec.name == "mine" and rec.order == 2 and recipe_source(rec) == path
    assert rec.finetune.lr == 0.05 and rec.finetune.epochs == 90  # merged into the base's block
    assert rec.subsample.r == 4.0  # from the base
    assert rec.rules[1] == Rule(match="layer3.*", order=4, sigma_init=2.0)
    s = rec.settings_for("layer3.0.conv1")
    assert (s.order, s.sigma_init, s.skip) == (4, 2.0, False)
    assert rec.settings_for("conv1").skip
    assert recipe_to_dict(rec)["rules"][0] == {"match": "conv1", "skip": True}  # unset rule keys are left out


@pytest.mark.parametrize(
    "text,key,fragment",
    [
        ("ordr: 3\n", "ordr", "unknown key; did you mean 'order'?"),
        ("subsample:\n  mdoe: keep\n", "subsample.mdoe", "did you mean 'mode'?"),
        ("finetune:\n  learning_rate: 0.1\n", "finetune.learning_rate", "allowed keys here: optimizer"),
        ("rules:\n  - {match: a, ordr: 2}\n", "rules[0].ordr", "did you mean 'order'?"),
        ("order: '3'\n", "order", "expected an int, got str '3'"),
        ("order: 2.5\n", "order", "expected an int, got float 2.5"),
        ("learn_sigma: 1\n", "learn_sigma", "expected true/false, got int 1"),
        ("subsample: keep\n", "subsample", "expected a mapping"),
        ("rules: {match: a}\n", "rules", "expected a list"),
        ("order: 12\n", "order", "12 is not allowed; expected an int in 0..8"),
        ("order: -1\n", "order", "-1 is not allowed"),
        ("extent: 0\n", "extent", "0 is not allowed; expected a positive finite number"),
        ("sigma_init: kernal\n", "sigma_init", "'kernal' is not allowed; expected 'kernel'"),
        ("sigma_init: -0.5\n", "sigma_init", "-0.5 is not allowed"),
        ("sigma_per: pixel\n", "sigma_per", "one of 'layer', 'channel'"),
        ("max_size: 0\n", "max_size", "0 is not allowed; expected an int ≥ 1"),
        ("subsample:\n  r: -1\n", "subsample.r", "-1 is not allowed"),
        ("subsample:\n  r: often\n", "subsample.r", "'often' is not allowed; expected 'auto'"),
        ("subsample:\n  where: sometimes\n", "subsample.where", "one of 'original', 'every_layer'"),
        ("subsample:\n  interpolation: cubic\n", "subsample.interpolation", "'cubic' is not allowed"),
        ("subsample:\n  where: every_layer\n", "subsample.r", "'auto' is not allowed with subsample.where"),
        ("rules:\n  - {order: 2}\n", "rules[0].match", "required key is missing"),
        ("rules:\n  - {match: a}\n  - {match: b, order: 9}\n", "rules[1].order", "9 is not allowed"),
        ("rules:\n  - {match: ''}\n", "rules[0].match", "non-empty glob"),
        ("finetune:\n  optimizer: adam\n", "finetune.optimizer", "one of 'sgd', 'adamw'"),
        ("finetune:\n  lr: 0\n", "finetune.lr", "0 is not allowed"),
        ("finetune:\n  momentum: 1.5\n", "finetune.momentum", "[0, 1)"),
        ("finetune:\n  schedule: poly\n", "finetune.schedule", "one of 'cosine', 'step', 'constant'"),
        ("finetune:\n  epochs: 0\n", "finetune.epochs", "an int ≥ 1"),
        ("aspp:\n  tie: maybe\n", "aspp.tie", "'auto' (tie the heads found), true or false"),
    ],
)
def test_validation_errors_name_file_key_value(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert fragment in msg, msg
    assert err.value.key == key and err.value.where == path


def test_yaml_and_file_errors(tmp_path):
    with pytest.raises(RecipeError, match=r"not valid YAML at line 2"):
        load_recipe(write(tmp_path, "order: [3\n"))
    with pytest.raises(RecipeError, match="the file is empty"):
        load_recipe(write(tmp_path, "# nothing\n"))
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(write(tmp_path, "- order: 3\n"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_recipe(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="unknown built-in recipe 'paper-unet'; did you mean .*'paper-unet-order2'"):
        load_recipe("paper-unet")
    with pytest.raises(TypeError, match="recipe must be"):
        load_recipe(3)
    a = write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(RecipeError, match="circular 'base' chain"):
        load_recipe(a)


def test_checks_cover_schema_fields():
    """Every checked key path exists in the schema (guards against renames)."""
    from njetify.recipes.schema import AsppConfig, CalibrationConfig, FinetuneConfig, SubsampleConfig

    names = {f.name for f in dataclasses.fields(Recipe)}
    sections = {"subsample": SubsampleConfig, "aspp": AsppConfig, "calibration": CalibrationConfig,
                "finetune": FinetuneConfig, "rules": Rule}
    for key in CHECKS:
        section, _, field = key.rpartition(".")
        assert field in ({f.name for f in dataclasses.fields(sections[section])} if section else names), key


def test_resolve_recipe_overrides():
    rec = resolve_recipe("paper-resnet32", order=2, r=2, subsample=None, finetune={"lr": 0.5},
                         rules=[{"match": "conv1", "skip": True}])
    assert rec.order == 2 and rec.subsample.r == 2.0 and rec.subsample.mode == "safe"
    assert rec.finetune.lr == 0.5 and rec.finetune.epochs == 90
    assert rec.rules == [Rule(match="conv1", skip=True)]
    assert recipe_source(rec) == "built-in recipe 'paper-resnet32' + keyword overrides"
    assert resolve_recipe(None) == load_recipe("default")
    assert resolve_recipe(None, order=None, subsample=None) == load_recipe("default")
    keep = resolve_recipe(Recipe(), subsample="keep", aspp=True, where="original", interpolation="area")
    assert (keep.subsample.mode, keep.aspp.tie, keep.subsample.interpolation) == ("keep", True, "area")
    base = Recipe(rules=[Rule(match="a")])
    out = resolve_recipe(base, rules=[Rule(match="b", order=1)])
    assert [r.match for r in out.rules] == ["a", "b"] and base.rules == [Rule(match="a")]  # input untouched


@pytest.mark.parametrize(
    "overrides,key,fragment",
    [
        ({"ordr": 2}, "ordr", "did you mean 'order'?"),
        ({"order": 2.5}, "order", "expected an int"),
        ({"subsample": "sometimes"}, "subsample.mode", "one of 'safe', 'keep'"),
        ({"r": 0}, "subsample.r", "0 is not allowed"),
        ({"aspp": "yes"}, "aspp.tie", "'auto' (tie the heads found), true or false"),
        ({"finetune": 3}, "finetune", "expected a mapping"),
        ({"where": "every_layer"}, "subsample.r", "'auto' is not allowed"),
    ],
)
def test_override_errors(overrides, key, fragment):
    with pytest.raises(RecipeError) as err:
        resolve_recipe("default", **overrides)
    assert str(err.value).startswith(f"keyword override: {key}: ") and fragment in str(err.value)


def test_validate_rules_against_model():
    model = njetify.create_model("resnet20")
    rec = resolve_recipe(rules=[{"match": "layer1.*.conv1"}, {"match": "conv1"}])
    assert validate_rules_against(rec, model) == [["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"], ["conv1"]]
    bad = resolve_recipe(rules=[{"match": "conv1"}, {"match": "layer4.*"}])
    with pytest.raises(RecipeError) as err:
        validate_rules_against(bad, model)
    msg = str(err.value)
    assert "rules[1].match: 'layer4.*' matches no module of CifarResNet" in msg and "'layer3." in msg


def test_validate_rules_names_the_file(tmp_path):
    path = write(tmp_path, "rules:\n  - {match: 'features.*'}\n")
    with pytest.raises(RecipeError, match=f"^{path}: rules\\[0\\].match: 'features.\\*' matches no module"):
        validate_rules_against(load_recipe(path), njetify.create_model("resnet20"))


def test_recipes_drive_the_conversion(tmp_path):
    from njetify.surgery import convert

    torch.manual_seed(0)
    model = njetify.create_model("resnet20")
    x = torch.randn(1, 3, 32, 32)
    _, report = convert(model, recipe="paper-resnet110", example_inputs=x)
    assert report.recipe["order"] == 2 and not report.select(kind="subsample", action="subsampled")
    path = write(tmp_path, "base: default\norder: 2\nmax_fit_error: null\n"  # random init fails the gate at order 2
                 "rules:\n  - {match: 'layer3.*', skip: true}\n")
    converted, report = convert(model, recipe=path, example_inputs=x)
    assert isinstance(converted.layer3[0].conv1, nn.Conv2d)
    assert type(converted.layer1[0].conv1).__name__ == "NJetConv2d" and converted.layer1[0].conv1.order == 2


@pytest.mark.parametrize(
    "model_name,kwargs,recipe,shape",
    [
        ("unet_small", {"width": 8}, "paper-unet-order2", (1, 3, 24, 24)),
        ("unet_small", {"width": 8}, "paper-unet-order4", (1, 3, 24, 24)),
        pytest.param("nin", {}, "paper-nin", (2, 3, 32, 32), marks=pytest.mark.slow),
        pytest.param("allcnn", {}, "paper-allcnn", (2, 3, 32, 32), marks=pytest.mark.slow),
        pytest.param("resnet32", {}, "paper-resnet32", (2, 3, 32, 32), marks=pytest.mark.slow),
        pytest.param("resnet20", {}, "paper-resnet110", (2, 3, 32, 32), marks=pytest.mark.slow),
    ],
)
def test_paper_recipes_convert_their_models(model_name, kwargs, recipe, shape):
    from njetify.surgery import convert

    torch.manual_seed(0)
    model = njetify.create_model(model_name, **kwargs).eval()
    x = torch.randn(shape)
    converted, report = convert(model, recipe=recipe, example_inputs=x)
    rec = load_recipe(recipe)
    with torch.no_grad():
        assert converted.eval()(x).shape == model(x).shape
    njet = [m for m in converted.modules() if type(m).__name__ == "NJetConv2d"]
    assert njet and all(m.order == rec.order for m in njet)
    assert all(torch.allclose(m.sigma, torch.tensor(1.0)) for m in njet)  # σ₀ = 1 in the paper recipes
    subsampled = report.select(kind="subsample", action="subsampled")
    assert bool(subsampled) == (rec.subsample.mode == "safe")


def test_convert_rejects_a_rule_that_matches_no_module():
    from njetify import convert, create_model
    from njetify.recipes import Recipe, RecipeError, Rule

    with pytest.raises(RecipeError, match=r"rules\[0\]\.match: 'layer9\.\*' matches no module of CifarResNet"):
        convert(create_model("resnet20"), recipe=Recipe(rules=[Rule(match="layer9.*", order=2)]))
