import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.adaptive import bpda, eot


def quantise_to_bits(x, bits=3):
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


def test_bpda_is_exact_forward_and_straight_through_backward():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    y = bpda(quantise_to_bits)(x)
    assert torch.equal(y.detach(), quantise_to_bits(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # identity in the backward pass
    # without BPDA the rounding gives no gradient at all
    z = torch.rand(2, 3, 8, 8, requires_grad=True)
    quantise_to_bits(z).sum().backward()
    assert torch.count_nonzero(z.grad) == 0


def test_bpda_uses_the_given_approximation_gradient():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    y = bpda(quantise_to_bits, approximation=lambda v: 3 * v)(x)
    assert torch.allclose(y.detach(), quantise_to_bits(x.detach()), atol=1e-6)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3.0))


def test_pgd_through_bpda_defeats_a_quantisation_defense(tiny_model, images):
    degraded, gt = images
    objective = make_objective("mse-clean")

    def defended(x):  # a non-differentiable input transform in front of the model
        return tiny_model(bpda(quantise_to_bits)(x))

    def defended_plain(x):
        return tiny_model(quantise_to_bits(x))

    with torch.no_grad():
        reference = objective.reference(defended_plain(degraded), gt)
        before = objective(defended_plain(degraded), reference)
    adversarial = make_attack("pgd", eps=8 / 255, steps=10).perturb(defended, degraded, objective, reference,
                                                                   torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = objective(defended_plain(adversarial), reference)
    assert after.mean() > 2 * before.mean()


class NoisyDefense(torch.nn.Module):
    """A randomised defense: Gaussian noise before the model, drawn afresh on every call."""

    def __init__(self, model, sigma, generator):
        super().__init__()
        self.model, self.sigma, self.generator = model, sigma, generator

    def forward(self, x):
        noise = torch.randn(x.shape, generator=self.generator)
        return self.model(x + self.sigma * noise)


def gradient_estimates(model, attack, x, objective, reference, repeats):
    grads = []
    for _ in range(repeats):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(attack.value(model, x, objective, reference).sum(), x)
        grads.append(grad)
    return torch.stack(grads)


def test_eot_lowers_the_variance_of_the_gradient(tiny_model, images):
    degraded, gt = images
    objective = make_objective("mse-clean")
    model = NoisyDefense(tiny_model, 0.05, torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
    plain = make_attack("pgd", eps=8 / 255, steps=2)
    variance_1 = gradient_estimates(model, plain, degraded, objective, reference, 12).var(dim=0).mean()
    variance_8 = gradient_estimates(model, eot(plain, k=8), degraded, objective, reference, 12).var(dim=0).mean()
    assert variance_8 < 0.35 * variance_1  # ≈ 1/8 in expectation


def test_eot_composes_with_a_white_box_attack_and_keeps_its_budget(tiny_model, images):
    degraded, gt = images
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
    wrapped = eot(make_attack("pgd", eps=4 / 255, steps=3), k=2)
    assert wrapped.name == "eot2-pgd" and wrapped.params["eot"] == 2
    model = NoisyDefense(tiny_model, 0.02, torch.Generator().manual_seed(5))
    adversarial = wrapped.perturb(model, degraded, objective, reference, torch.Generator().manual_seed(0))
    assert (adversarial - degraded).abs().max() <= 4 / 255 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    # with a deterministic model, EOT(k) is the plain attack
    a = eot(make_attack("pgd", eps=4 / 255, steps=3), k=3).perturb(tiny_model, degraded, objective, reference,
                                                                   torch.Generator().manual_seed(1))
    b = make_attack("pgd", eps=4 / 255, steps=3).perturb(tiny_model, degraded, objective, reference,
                                                         torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, atol=1e-6)
