"""Cross-check backends: the L∞ PGD of advertorch 0.2.3 and of foolbox 3.3.4, run on udcbench's objective.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018, as implemented by
advertorch (Ding et al., "AdverTorch v0.1", 2019: `LinfPGDAttack`) and foolbox (Rauber et al., JOSS 2020:
`LinfPGD`). They exist to check that udcbench's native `pgd` is not weaker than a reference implementation
(tests/attacks/test_backends.py requires native pgd to reach ≥ 99 % of advertorch's objective) and to time it
against one (benchmarks/attack_overhead.py). Both need the `xcheck` extra: pip install -c constraints.txt
'udcbench[xcheck]'.

Distance: L∞, ‖δ‖∞ ≤ eps, and y + δ ∈ [0, 1] (both libraries clip to [0, 1]).
Arguments: eps (8/255), alpha (None -> eps/4), steps (20), random_start (True: δ ~ U(−eps, eps)).
Shapes: degraded (B, 3, H, W) in [0, 1] -> (B, 3, H, W).

How they differ from native `pgd`, and how they are made comparable:
- The libraries return the LAST iterate; native pgd returns the best iterate per image. Compare final objective
  values (the strength check does); the last iterate can be below the best one seen.
- The objective is evaluated through `self.value(model, x, objective, reference)` like every udcbench attack:
  advertorch's `predict` maps x to the per-image objective values and its `loss_fn` sums them (`y` is the
  reference, passed explicitly so advertorch never takes an argmax); foolbox's `get_loss_fn` is overridden to
  return the same sum (regression, not cross-entropy), with the reference carried in as the criterion's labels.
- Random start: both libraries draw δ0 from torch's global RNG. Here that RNG is forked (the process-global
  state is untouched) and set to the passed generator's state, so on the CPU the library draws the very numbers
  native pgd draws for the same seed: advertorch's δ0 is bit-identical to native pgd's, foolbox's equal up to
  rounding (it computes u·2ε − ε, native (2u − 1)·ε). On a CUDA input the library draws on the device RNG,
  seeded from the generator: deterministic, but a different δ0 than native. The generator is then advanced as
  native pgd advances it.
- The libraries call `loss.backward()`, which would accumulate gradients into the weights; the model's
  parameters are frozen for the call and restored afterwards (for a model reached only through a closure, e.g.
  under a mask, freeze them beforehand — `load_model` does).

    attack = make_attack("advertorch:pgd", eps=8/255, steps=20)
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
import warnings

import torch
from torch import nn

from udcbench.attacks.base import Attack, AttackKind, register_attack_class
from udcbench.errors import MissingExtraError, SpecError

INSTALL_HINT = "install it with pip install -c constraints.txt 'udcbench[xcheck]'"


# --- importing the libraries (lazily: `udcbench list attacks` never imports them) ---------------------------

def _zero_gradients(x) -> None:
    """torch < 1.9's torch.autograd.gradcheck.zero_gradients, which advertorch imports at module level."""
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    elif isinstance(x, (list, tuple)):
        for element in x:
            _zero_gradients(element)


class _NeedsTorchvision:
    """Stands in for torchvision.transforms.ToTensor / ToPILImage, which advertorch builds at import time for its
    JPEG defense; udcbench never calls them."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise MissingExtraError("advertorch's JPEG defense needs a working torchvision; udcbench's own JPEG "
                                "defense does not (`udcbench list defenses`)")


def _torchvision_works() -> bool:
    """Whether torchvision.transforms imports; a failed attempt leaves no half-imported torchvision behind."""
    before = {name for name in sys.modules if name.split(".")[0] == "torchvision"}
    try:
        importlib.import_module("torchvision.transforms")
        return True
    except Exception:  # a CUDA torchvision on CPU torch fails with RuntimeError/OSError, not only ImportError
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision" and n not in before]:
            del sys.modules[name]
        return False


@contextlib.contextmanager
def _advertorch_shims():
    """advertorch 0.2.3 imports `zero_gradients` (gone from torch) and torchvision (which may not
    import). Provide both for the duration of the import only, never shadowing a working torchvision."""
    gradcheck = importlib.import_module("torch.autograd.gradcheck")
    added_zero_gradients = not hasattr(gradcheck, "zero_gradients")
    if added_zero_gradients:
        gradcheck.zero_gradients = _zero_gradients
    stubs: dict[str, types.ModuleType] = {}
    if not _torchvision_works():
        transforms = types.ModuleType("torchvision.transforms")
        transforms.ToTensor = transforms.ToPILImage = _NeedsTorchvision
        package = types.ModuleType("torchvision")
        package.__path__ = []
        package.transforms = transforms
        stubs = {"torchvision": package, "torchvision.transforms": transforms}
        saved = {name: sys.modules[name] for name in stubs if name in sys.modules}
        sys.modules.update(stubs)
    try:
        yield
    finally:
        if added_zero_gradients and getattr(gradcheck, "zero_gradients", None) is _zero_gradients:
            del gradcheck.zero_gradients
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]
                if name in saved:
                    sys.modules[name] = saved[name]


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0] if text else type(error).__name__


def _import(library: str):
    """advertorch.attacks or foolbox, or MissingExtraError (one line naming the extra)."""
    attack = f"{library}:pgd"
    loaded = sys.modules.get("advertorch.attacks" if library == "advertorch" else library)
    if loaded is not None:
        return loaded
    try:
        found = importlib.util.find_spec(library) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtraError(f"{attack} needs {library}; {INSTALL_HINT}")
    try:
        if library == "advertorch":
            with _advertorch_shims():
                return importlib.import_module("advertorch.attacks")
        with warnings.catch_warnings():  # foolbox 3.3.4 imports scipy.ndimage.filters (deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("foolbox")
    except Exception as error:
        raise MissingExtraError(f"{attack} needs a working {library} (importing it failed with "
                                f"{_one_line(error)}); {INSTALL_HINT}") from None


def unavailable_reason(library: str) -> str | None:
    """None when `library` ("advertorch" or "foolbox") imports, else the one-line reason."""
    try:
        _import(library)
    except MissingExtraError as error:
        return str(error)
    return None


def available(library: str) -> bool:
    """Whether the cross-check backend `library` ("advertorch" or "foolbox") can run here."""
    return unavailable_reason(library) is None


# --- shared plumbing -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _frozen(model):
    """The model's trainable parameters with requires_grad off for the call (the libraries call backward())."""
    parameters = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


@contextlib.contextmanager
def _library_rng(generator: torch.Generator, like: torch.Tensor, random_start: bool):
    """Fork torch's global RNG and set it from `generator`, so a library's random start is reproducible, leaves
    the global RNG untouched and, on the CPU, draws what native pgd's cpu_rand would; then advance `generator`
    exactly as native pgd does."""
    devices = [like.device] if like.device.type == "cuda" else []
    state = generator.get_state()
    with torch.random.fork_rng(devices=devices):
        if generator.device.type == "cpu":
            torch.set_rng_state(state)
        else:
            torch.manual_seed(generator.initial_seed())
        if devices:
            copy = torch.Generator().manual_seed(generator.initial_seed())
            if generator.device.type == "cpu":
                copy.set_state(state)
            torch.cuda.manual_seed(int(torch.randint(0, 2**62, (1,), generator=copy)))
        yield
    if random_start:  # native pgd draws one U(0,1) tensor of the input's shape per restart
        torch.rand(like.shape, generator=generator, dtype=like.dtype, device=generator.device)


class _Callable(nn.Module):
    """An nn.Module around a plain callable (foolbox accepts only modules; a masked model is a closure)."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


class _LibraryPGD(Attack):
    norm = "linf"
    kind = AttackKind.CROSS_CHECK
    library = ""

    def __init__(self, eps: float = 8 / 255, alpha: float | None = None, steps: int = 20,
                 random_start: bool = True):
        if not 0 < eps <= 1:
            raise SpecError(f"{self.name}: eps must lie in (0, 1], got {eps:g}")
        alpha = eps / 4 if alpha is None else alpha
        if alpha <= 0:
            raise SpecError(f"{self.name}: alpha must be positive, got {alpha:g}")
        if int(steps) < 0:
            raise SpecError(f"{self.name}: steps must be ≥ 0, got {steps}")
        _import(self.library)  # fails here, before any work, when the extra is missing (not kept: stays picklable)
        super().__init__(eps=float(eps), alpha=float(alpha), steps=int(steps), random_start=bool(random_start))

    def perturb(self, model, degraded, objective, reference, generator):
        degraded, reference = degraded.detach(), reference.detach()
        with _frozen(model), _library_rng(generator, degraded, self.params["random_start"]), torch.enable_grad():
            adversarial = self._run(model, degraded, objective, reference)
        return adversarial.detach().to(degraded.dtype)

    def _run(self, model, degraded, objective, reference) -> torch.Tensor:
        raise NotImplementedError


class AdvertorchPGD(_LibraryPGD):
    name = "advertorch:pgd"
    library = "advertorch"

    def _run(self, model, degraded, objective, reference):
        def predict(x):  # per-image objective values; advertorch's loss_fn sums them
            return self.value(model, x, objective, reference)

        attack = _import("advertorch").LinfPGDAttack(
            predict, loss_fn=lambda values, _reference: values.sum(), eps=self.params["eps"],
            nb_iter=self.params["steps"], eps_iter=self.params["alpha"], rand_init=self.params["random_start"],
            clip_min=0.0, clip_max=1.0, targeted=False)
        return attack.perturb(degraded, reference)


class FoolboxPGD(_LibraryPGD):
    name = "foolbox:pgd"
    library = "foolbox"

    def _run(self, model, degraded, objective, reference):
        foolbox = _import("foolbox")
        value = self.value

        class RegressionLinfPGD(foolbox.attacks.LinfPGD):
            def get_loss_fn(self, fmodel, labels):  # labels carry the reference; the loss is our objective
                def loss_fn(inputs):
                    return type(inputs)(value(model, inputs.raw, objective, labels.raw).sum())
                return loss_fn

        network = model if isinstance(model, nn.Module) else _Callable(model).eval()
        fmodel = foolbox.PyTorchModel(network, bounds=(0, 1), device=degraded.device)
        eps, alpha = self.params["eps"], self.params["alpha"]
        attack = RegressionLinfPGD(rel_stepsize=alpha / eps, abs_stepsize=alpha, steps=self.params["steps"],
                                   random_start=self.params["random_start"])
        # a Misclassification criterion only to carry the reference (run() never evaluates it, unlike __call__)
        return attack.run(fmodel, degraded, foolbox.criteria.Misclassification(reference), epsilon=eps)


for _cls, _paper in ((AdvertorchPGD, "Madry et al., ICLR 2018, via advertorch 0.2.3 LinfPGDAttack (Ding et al., "
                                     "2019); returns the last iterate"),
                     (FoolboxPGD, "Madry et al., ICLR 2018, via foolbox 3.3.4 LinfPGD (Rauber et al., JOSS 2020); "
                                  "returns the last iterate")):
    register_attack_class(_cls, paper=_paper, extra="xcheck")
del _cls, _paper
