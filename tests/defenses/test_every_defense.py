"""Invariants that every registered defense keeps: [0, 1] images of the same shape and dtype, the same result for
a seed, identities where the settings make one, and the hooks the runner and reports use (`ready`, `networks`,
`label`, settings checked against what the component declares)."""

import json

import pytest
import torch

import udcbench
from udcbench.data.datasets import Sample
from udcbench.defenses import DefenseComponent, make_defense
from udcbench.defenses import diffusion
from udcbench.defenses.base import Setting, component_class, defense_label
from udcbench.defenses.diffusion import PriorUNet, _DiffusersUNet
from udcbench.errors import SpecError
from udcbench.models import WEIGHTS_DIR
from udcbench.registry import DEFENSES

# one fast spec per registered defense (few purification steps: the bundled prior is small)
FAST = {"none": "none", "jpeg": "jpeg:50", "blur": "blur:1", "median": "median:3", "bits": "bits:3", "ft": "ft",
        "purify": "purify:t=20,steps=1", "smooth": "smooth:n=5,attack_n=5"}
MODEL = "uformer-nano"  # has bundled fine-tuned weights (uformer-nano-ft), which `ft` swaps in
# a bare value and the setting it stands for, per defense with a shorthand
SHORTHANDS = {"jpeg": "50", "blur": "1.5", "median": "5", "bits": "3", "purify": "20",
              "ft": str(WEIGHTS_DIR / f"{MODEL}-ft.safetensors"), "smooth": "0.3"}


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return udcbench.load_model(MODEL)


@pytest.fixture(scope="module")
def defenses():
    """Each FAST defense, built once (purify loads the bundled prior)."""
    return {name: make_defense(spec) for name, spec in FAST.items()}


def images(height=40, width=36, batch=2, seed=7):
    """Random images with saturated corners (both ends of [0, 1] must stay in range)."""
    x = torch.rand(batch, 3, height, width, generator=seeded(seed))
    x[0, :, :6, :6] = 1.0
    x[-1, :, -6:, -6:] = 0.0
    return x


def test_every_registered_defense_is_covered():
    assert sorted(FAST) == DEFENSES.names()
    assert sorted(SHORTHANDS) == sorted(n for n in DEFENSES.names() if component_class(n).shorthand is not None)


@pytest.mark.parametrize("name", sorted(FAST))
def test_each_defense_is_a_component_class_that_declares_its_settings(name):
    found = component_class(name)
    assert issubclass(found, DefenseComponent) and found.name == name
    assert found.shorthand is None or found.shorthand in found.settings
    for key, setting in found.settings.items():
        assert isinstance(setting, Setting) and setting.expected
        if setting.default is not None:  # a default reads back as itself
            assert setting.parse(str(setting.default)) == setting.default, key


@pytest.mark.parametrize("name", sorted(FAST))
def test_transform_keeps_shape_dtype_range_and_is_seeded(name, defenses, model):
    defense, x = defenses[name], images()
    transform, differentiable_transform = defense.transform, defense.differentiable_transform
    if defense.smoother is not None:  # smoothing is of the whole system: checked through the model
        x = images(32, 48)
        transform = lambda image, generator: defense.restore(model, image, generator)  # noqa: E731
        differentiable_transform = lambda image, generator: defense.restore(  # noqa: E731
            model, image, generator, differentiable=True)
    out = transform(x, seeded(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(transform(x, seeded(0)), out)
    other = transform(x, seeded(1))
    assert torch.equal(other, out) != defense.randomized  # randomised ones draw from the generator only
    # what an adaptive attack differentiates: the exact defense in value, with a finite gradient
    attacked = x.clone().requires_grad_(True)
    differentiable = differentiable_transform(attacked, seeded(0))
    assert torch.equal(differentiable.detach(), out)
    differentiable.sum().backward()
    assert torch.isfinite(attacked.grad).all() and attacked.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(FAST))
def test_the_defended_model_restores_in_range(name, defenses, model):
    defense, x = defenses[name], images(32, 48, batch=1)
    defended = defense.prepare_model(model)
    assert (defended is not model) == (name == "ft")
    with torch.no_grad():
        out = defended(defense.transform(x, seeded(0)))
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1


def quantised(x):
    return torch.round(x * 255) / 255


@pytest.mark.parametrize("spec, inputs", [
    ("none", images()),
    ("ft", images()),  # swaps weights; the input passes unchanged
    ("purify:t=0,steps=1", images()),  # no noise added: the input itself
    ("bits:8", quantised(images())),  # 8 bits keep an 8-bit image
    ("blur:0.01", images()),  # the Gaussian's tails underflow to 0: the kernel is [0, 1, 0]
    ("median:3", torch.full((2, 3, 40, 36), 0.3)),  # the median of a constant window is that constant
])
def test_identities_where_the_settings_make_one(spec, inputs):
    defense = make_defense(spec)
    assert torch.equal(defense.transform(inputs, seeded(0)), inputs)
    assert torch.equal(defense.differentiable_transform(inputs, seeded(0)), inputs)
    assert defense.is_identity == (spec == "none")


def count_passes(counted, function):
    """Images through every module for which `counted(module)` holds while `function` runs."""
    images = []

    def hook(module, inputs):
        if counted(module):
            images.append(inputs[0].shape[0])
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        function()
    finally:
        handle.remove()
    return sum(images)


def old_type_count(function):
    """Passes the runner counted before the `networks` hook: every PriorUNet / _DiffusersUNet forward."""
    return count_passes(lambda module: isinstance(module, (PriorUNet, _DiffusersUNet)), function)


def hook_count(networks, function):
    """Passes of exactly `networks`, as runner/execute.py `SharedWork.counting` counts them."""
    ids = {id(network) for network in networks}
    return count_passes(lambda module: id(module) in ids, function)


@pytest.mark.parametrize("name", sorted(FAST))
def test_networks_are_what_the_runner_counts_and_ready_prepares_them(name, defenses, model):
    defense, x = defenses[name], images()
    networks = defense.networks()
    assert all(isinstance(network, torch.nn.Module) for network in networks)
    if name == "purify":
        (unet,) = networks
        assert unet is defense.components[0].prior.unet
    else:  # `ft`'s swapped model is a restoration model, counted as one
        assert networks == []
    run = lambda: defense.transform(x, seeded(0))  # noqa: E731
    passes = hook_count(networks, run)
    assert passes == old_type_count(run) and (passes > 0) == (name == "purify")
    record = defense.record(MODEL)
    assert defense.ready(model, [], 0, torch.device("cpu")) is None
    defense.ready(model, [], 0, "cpu")  # idempotent
    assert defense.record(MODEL) == record
    assert all(p.device.type == "cpu" for network in networks for p in network.parameters())


def tiny_samples(count=2):
    samples = []
    for index in range(count):
        gt = torch.rand(3, 32, 32, generator=seeded(index))
        samples.append(Sample(name=f"im{index}", degraded=(0.8 * gt + 0.1).clamp(0, 1), gt=gt))
    return samples


def test_purify_auto_is_calibrated_by_ready_once_and_labelled_with_its_t_star(prior_file, tiny_model, monkeypatch):
    from udcbench.defenses import noise_level

    calls = []
    real = noise_level.select_t_star
    monkeypatch.setattr(noise_level, "select_t_star", lambda *args: calls.append(args) or real(*args))
    spec = f"purify:auto,n=1,loss=50,steps=1,prior={prior_file}"
    defense = make_defense(spec)
    (purify,) = defense.components
    assert purify.t_star is None and defense.networks() == [purify.prior.unet]
    defense.ready(tiny_model, tiny_samples(), 0, "cpu")
    chosen = purify.t_star
    assert chosen is not None and purify.chosen["t_star"] == chosen and len(calls) == 1
    assert calls[0][1] is defense  # calibrated through the whole defense
    defense.ready(tiny_model, tiny_samples(), 0, "cpu")  # idempotent: chosen once
    assert len(calls) == 1 and purify.t_star == chosen
    params = json.dumps(defense.record("tiny"))
    assert defense_label(spec, params) == f"{spec}(t*={chosen})"
    assert defense_label(spec + "+ft", params) == f"{spec}(t*={chosen})+ft"
    assert defense.transform(images(), seeded(0)).shape == images().shape


def legacy_label(spec, params):
    """The label report/identity.py gave before the `label` hook (the reference the hook must reproduce)."""
    if not isinstance(params, str) or "auto" not in spec:
        return spec
    chosen = [part["t_star"] for part in json.loads(params) if part.get("component") == "purify" and "auto" in part]
    parts = spec.split("+")
    for index, part in enumerate(parts):
        if part.startswith("purify:") and "auto" in part and chosen:
            parts[index] = f"{part}(t*={chosen.pop(0)})"
    return "+".join(parts)


AUTO = {"component": "purify", "t_star": 30, "steps": 2, "auto": {"t_star": 30, "met": True}}
FT = {"component": "ft", "weights": "bundled:abc"}


@pytest.mark.parametrize("spec, records, expected", [
    ("purify:auto+ft", [AUTO, FT], "purify:auto(t*=30)+ft"),
    ("purify:auto", [AUTO], "purify:auto(t*=30)"),
    ("purify:auto,loss=0.5,n=2", [AUTO], "purify:auto,loss=0.5,n=2(t*=30)"),
    ("purify:t=auto+jpeg:75", [AUTO], "purify:t=auto(t*=30)+jpeg:75"),
    ("jpeg:75+purify:auto", [AUTO], "jpeg:75+purify:auto(t*=30)"),
    ("purify:auto", None, "purify:auto"),
    ("purify:auto", [], "purify:auto"),
    ("purify:t=30", [{**AUTO, "t_star": 30, "auto": None}], "purify:t=30"),
    ("purify", [{"component": "purify", "t_star": 30}], "purify"),
    ("purify:t=20+ft", [{"component": "purify", "t_star": 20}, FT], "purify:t=20+ft"),
    ("purify:auto + ft", [AUTO, FT], "purify:auto (t*=30)+ ft"),
    ("none", None, "none"), ("jpeg:", [], "jpeg:"), ("blur:1.5", [], "blur:1.5"), ("ft", [FT], "ft"),
    ("unknown:auto", [AUTO], "unknown:auto"),
    ("purify:auto+purify:auto", [AUTO, {**AUTO, "t_star": 50}], "purify:auto(t*=30)+purify:auto(t*=50)"),
])
def test_labels_are_the_reports_labels(spec, records, expected, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("labelling must not build a defense")
    monkeypatch.setattr(diffusion, "load_prior", no_loading)
    params = None if records is None else json.dumps(records)
    assert defense_label(spec, params) == expected == legacy_label(spec, params)


@pytest.mark.parametrize("name", sorted(FAST))
def test_every_defense_labels_its_own_record_as_its_spec(name, defenses):
    params = json.dumps(defenses[name].record(MODEL)) if defenses[name].record(MODEL) else None
    assert defense_label(FAST[name], params) == FAST[name]
    assert component_class(name).label(None, None) == name


@pytest.mark.parametrize("name", sorted(FAST))
def test_an_unknown_setting_is_refused_in_one_line_naming_the_valid_ones(name, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("settings are checked before anything is loaded")
    monkeypatch.setattr(diffusion, "load_prior", no_loading)
    with pytest.raises(SpecError) as error:
        make_defense(f"{name}:bogus=1")
    message = str(error.value)
    assert "\n" not in message
    settings = component_class(name).settings
    if not settings:
        assert message == f"defense {name!r} takes no argument, got '{name}:bogus=1'"
        return
    assert message.startswith(f"defense {name!r} has no setting(s) bogus; its settings are ")
    assert all(f"{key}={setting.default}" in message for key, setting in settings.items())


def test_unknown_settings_are_named_together():
    with pytest.raises(SpecError) as error:
        make_defense("jpeg:zeta=1,alpha=2")
    assert str(error.value) == ("defense 'jpeg' has no setting(s) alpha, zeta; its settings are quality=75 (write "
                                "jpeg:key=value,… with a key among quality)")


@pytest.mark.parametrize("name", sorted(SHORTHANDS))
def test_a_bare_value_is_the_shorthand_setting(name, model):
    key, value = component_class(name).shorthand, SHORTHANDS[name]
    bare, keyed = make_defense(f"{name}:{value}"), make_defense(f"{name}:{key}={value}")
    assert bare.record(MODEL) == keyed.record(MODEL)
    x = images()
    assert torch.equal(bare.transform(x, seeded(0)), keyed.transform(x, seeded(0)))


@pytest.mark.parametrize("spec, message", [
    ("blur:1,5", "blur takes a Gaussian sigma in pixels > 0, e.g. blur:1.0; got 'blur:1,5'"),
    ("jpeg:quality=abc", "jpeg quality='abc' must be a quality 1–100, e.g. jpeg:quality=75"),
    ("bits:bit_depth=", "defense 'bits' setting 'bit_depth=' has no value; write bits:key=value,… with a key among "
                        "bit_depth"),
    ("purify:loss=x", "purify loss='x' must be a number, e.g. purify:auto,loss=1"),
])
def test_values_are_converted_with_clear_errors(spec, message):
    with pytest.raises(SpecError) as error:
        make_defense(spec)
    assert str(error.value) == message


def test_settings_convert_types_and_keep_the_shorthands(tmp_path):
    purify = make_defense("purify:auto,loss=2,n=1,eps=4").components[0]
    assert purify.t_star is None and purify.auto == {"loss": 2.0, "n": 1.0, "eps": 4.0}
    purify = make_defense("purify:t_star=12,steps=3,sampler=ddpm,tile=64,overlap=8,index=diffpure").components[0]
    assert (purify.t_star, purify.steps, purify.sampler, purify.tile, purify.overlap, purify.index) == \
        (12, 3, "ddpm", 64, 8, "diffpure")
    assert make_defense("blur:sigma=2").components[0].radius == 6
    assert make_defense("median:kernel_size=5").components[0].kernel_size == 5
    weights = tmp_path / "a=b,c.safetensors"  # ft:FILE takes the whole argument
    weights.write_bytes((WEIGHTS_DIR / f"{MODEL}-ft.safetensors").read_bytes())
    assert make_defense(f"ft:{weights}").components[0].file == str(weights)
