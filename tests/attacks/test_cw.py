import pytest
import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.errors import SpecError
from udcbench.metrics import psnr

from attack_helpers import assert_every_evaluation_goes_through_value

FAST = {"steps": 30, "search_steps": 4}


def attack_once(name, model, degraded, gt, objective="mse-clean", seed=0, **params):
    objective = make_objective(objective)
    with torch.no_grad():
        reference = objective.reference(model(degraded), gt, degraded)
    attack = make_attack(name, **params)
    adversarial = attack.perturb(model, degraded, objective, reference, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        output = model(adversarial)
        return adversarial, objective(output, reference), objective(model(degraded), reference), \
            psnr(output, reference)


def l2(delta):
    return delta.flatten(1).norm(dim=1)


def test_reaches_the_target_in_range_and_raises_the_objective(tiny_model, images):
    degraded, gt = images
    adversarial, value, before, achieved = attack_once("cw", tiny_model, degraded, gt, target_psnr=30.0, **FAST)
    assert adversarial.shape == degraded.shape
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    assert torch.all(achieved <= 30.0)
    assert torch.all(value >= before)


def test_saturated_pixels_stay_in_range(tiny_model):
    degraded = torch.zeros(1, 3, 32, 32)
    degraded[..., :12] = 1.0
    degraded[..., 20:] = torch.linspace(0.2, 0.8, 12)  # tanh-saturated pixels barely move: leave it a free band
    adversarial, _, _, achieved = attack_once("cw", tiny_model, degraded, degraded, target_psnr=30.0, **FAST)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert torch.all(achieved <= 30.0)
    assert (adversarial - degraded)[..., :12].abs().max() < 1e-3


def test_deterministic_and_ignores_the_seed(tiny_model, images):
    degraded, gt = images
    a = attack_once("cw", tiny_model, degraded[:2], gt[:2], seed=1, steps=10, search_steps=2)[0]
    b = attack_once("cw", tiny_model, degraded[:2], gt[:2], seed=2, steps=10, search_steps=2)[0]
    assert torch.equal(a, b)


def test_an_image_already_past_the_target_is_returned_unchanged(tiny_model, images):
    degraded, gt = images  # the clean output is ~69 dB from its quantised self: a 90 dB target is met by y
    adversarial = attack_once("cw", tiny_model, degraded, gt, target_psnr=90.0, **FAST)[0]
    assert torch.equal(adversarial, degraded)


def test_an_unreachable_target_returns_the_strongest_iterate(tiny_model, images):
    degraded, gt = images
    adversarial, value, before, achieved = attack_once("cw", tiny_model, degraded, gt, target_psnr=0.1, steps=10,
                                                       search_steps=2)
    assert torch.all(achieved > 0.1)  # not reached...
    assert torch.all(value > 10 * before)  # ...but the fallback still deviates
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_targeted_pulls_the_output_toward_the_target(tiny_model, images):
    degraded, gt = images
    assert make_objective("targeted:input").targeted
    with torch.no_grad():
        start = psnr(tiny_model(degraded), degraded)  # ≈ 6.5–6.8 dB; this net cannot come much closer to y
    for i in range(degraded.shape[0]):
        target = start[i].item() + 0.2
        _, value, before, achieved = attack_once("cw", tiny_model, degraded[i:i + 1], gt[i:i + 1],
                                                 objective="targeted:input", target_psnr=target, **FAST)
        assert achieved.item() >= target and value.item() >= before.item()


def test_confidence_asks_for_a_margin_beyond_the_target(tiny_model, images):
    degraded, gt = images
    plain = attack_once("cw", tiny_model, degraded[:2], gt[:2], target_psnr=30.0, **FAST)
    margin = attack_once("cw", tiny_model, degraded[:2], gt[:2], target_psnr=30.0, confidence=2.0, **FAST)
    assert torch.all(margin[3] <= 28.0)
    assert l2(margin[0] - degraded[:2]).mean() > l2(plain[0] - degraded[:2]).mean()


def test_smaller_l2_than_pgd_l2_for_the_same_deviation(tiny_model, images):
    """The point of C&W: for the deviation PGD-L2 reaches at eps 0.5 (20 steps), C&W-L2 finds a smaller δ."""
    degraded, gt = images
    pgd, _, _, pgd_psnr = attack_once("pgd-l2", tiny_model, degraded, gt, eps=0.5, steps=20)
    pgd_norm = l2(pgd - degraded)
    cw_norm, cw_psnr = [], []
    for i in range(degraded.shape[0]):  # each image gets PGD's own deviation as its target
        adversarial, _, _, achieved = attack_once("cw", tiny_model, degraded[i:i + 1], gt[i:i + 1],
                                                  target_psnr=pgd_psnr[i].item(), steps=50, search_steps=6)
        cw_norm.append(l2(adversarial - degraded[i:i + 1]))
        cw_psnr.append(achieved)
    cw_norm, cw_psnr = torch.cat(cw_norm), torch.cat(cw_psnr)
    assert torch.all(cw_psnr <= pgd_psnr + 1e-4)  # the same deviation reached on every image
    assert cw_norm.mean() < 0.97 * pgd_norm.mean()
    assert torch.all(cw_norm < pgd_norm)


def test_defaults_and_validation():
    attack = make_attack("cw")
    assert attack.params == {"target_psnr": 20.0, "confidence": 0.0, "c_init": 1.0, "steps": 100,
                             "search_steps": 9, "lr": 0.01, "abort_early": True}
    assert "eps" not in attack.params
    assert (attack.name, attack.norm, attack.kind) == ("cw", "l2", "white-box")
    for bad in ({"target_psnr": 0.0}, {"target_psnr": float("inf")}, {"confidence": -1.0}, {"c_init": 0.0},
                {"lr": -0.1}, {"steps": 0}, {"search_steps": 0}):
        with pytest.raises(SpecError):
            make_attack("cw", **bad)
    with pytest.raises(SpecError, match="eps"):
        make_attack("cw", eps=1.0)


# the fixed trade-off form (const = c): minimise ‖δ‖₂² − c·N·MSE(f(y'), reference) for one c, no search
FIXED = {"steps": 30}
CONSTS = (0.02, 0.05, 0.3)  # the tiny net's useful range: y stays put below c ≈ 0.01, PSNR saturates above ≈ 1


def test_fixed_const_attacked_psnr_falls_as_the_constant_grows(tiny_model, images):
    degraded, gt = images[0][:2], images[1][:2]
    runs = [attack_once("cw", tiny_model, degraded, gt, const=c, **FIXED) for c in CONSTS]
    achieved = torch.stack([run[3] for run in runs])  # (constants, images): PSNR of f(y') against f(y)
    norms = torch.stack([l2(run[0] - degraded) for run in runs])
    assert torch.all(achieved[0] < 25.0)  # already in the range where c matters (y itself is ≈ 69 dB)
    assert torch.all(achieved[1:] < achieved[:-1] - 0.2)  # strictly lower on every image, by a margin
    assert torch.all(norms[1:] > norms[:-1])  # bought with a larger δ
    for adversarial, value, before, _ in runs:
        assert adversarial.min() >= 0 and adversarial.max() <= 1 and torch.all(value > before)


def test_fixed_const_means_the_same_at_any_image_size(tiny_model):
    """c trades summed squared errors for summed squared perturbation, so a 64×64 image needs no other c."""
    generator = torch.Generator().manual_seed(3)
    large = torch.rand(1, 3, 64, 64, generator=generator)
    small = large[..., 16:48, 16:48].contiguous()
    psnr_large = attack_once("cw", tiny_model, large, large, const=0.05, steps=20)[3]
    psnr_small = attack_once("cw", tiny_model, small, small, const=0.05, steps=20)[3]
    assert psnr_large.item() < 25.0 and psnr_small.item() < 25.0  # both moved (a bare MSE would move neither)
    assert abs(psnr_large.item() - psnr_small.item()) < 0.5  # measured: 0.1 dB


@pytest.mark.parametrize("objective", ["mse-clean", "mse-gt", "targeted:input"])
def test_fixed_const_objective_never_below_the_start(tiny_model, images, objective):
    degraded, gt = images[0][:2], images[1][:2]
    for const in (1e-3, 0.05):
        adversarial, value, before, _ = attack_once("cw", tiny_model, degraded, gt, objective=objective,
                                                    const=const, steps=20)
        assert torch.all(value >= before - 1e-7)
        assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_fixed_const_below_the_useful_range_returns_y(tiny_model, images):
    """At c = 1e-3 no iterate's loss ‖δ‖² − c·N·MSE beats y's (‖δ‖ = 0): y is returned, not Adam's last step."""
    degraded, gt = images
    adversarial = attack_once("cw", tiny_model, degraded, gt, const=1e-3, steps=20)[0]
    assert torch.equal(adversarial, degraded)


def test_fixed_const_is_deterministic_and_evaluates_through_value(tiny_model, images):
    degraded, gt = images[0][:2], images[1][:2]
    a = attack_once("cw", tiny_model, degraded, gt, seed=1, const=0.1, steps=5)[0]
    b = attack_once("cw", tiny_model, degraded, gt, seed=2, const=0.1, steps=5)[0]
    assert torch.equal(a, b)
    assert_every_evaluation_goes_through_value(make_attack("cw", const=0.1, steps=3), tiny_model, degraded, gt)


def test_fixed_const_params_and_validation():
    assert make_attack("cw", const=2).params == {"const": 2.0, "steps": 100, "lr": 0.01}
    assert make_attack("cw", const=0.5, steps=7, lr=0.05, search_steps=9).params == \
        {"const": 0.5, "steps": 7, "lr": 0.05}  # a search parameter at its default is accepted
    assert "const" not in make_attack("cw", const=None).params  # None: the minimum-norm form, as before
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1/2", True):
        # non-numbers and non-finite values are refused by the shared parameter check, the rest by cw's own
        with pytest.raises(SpecError, match=r"const (must be a (finite )?number|.* must be a positive finite number)"):
            make_attack("cw", const=bad)
    with pytest.raises(SpecError, match="search_steps=4 would be ignored"):
        make_attack("cw", const=1.0, search_steps=4)
    with pytest.raises(SpecError, match="target_psnr=30.0, abort_early=False would be ignored"):
        make_attack("cw", const=1.0, target_psnr=30.0, abort_early=False)
