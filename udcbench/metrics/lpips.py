"""LPIPS v0.1, native: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"
(CVPR 2018), with the AlexNet or VGG16 backbone, in plain torch (no torchvision, no `lpips` import).

The distance between images x and y in [0, 1], shape (B, 3, H, W), is computed as in the paper's v0.1
release: map to [-1, 1] (2x - 1), apply the scaling layer (x - shift) / scale with shift
(-0.030, -0.088, -0.188) and scale (0.458, 0.448, 0.450) per RGB channel, run the ImageNet backbone and tap
five ReLU outputs (AlexNet: after conv1..conv5; VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3). Per layer
the features are unit-normalised along channels (f / (||f||_2 + 1e-10)), their squared difference is weighted
by the learned non-negative 1x1 linear layer (channels -> 1, no bias) and averaged over space; the five layer
scores are summed. Results are (B,); identical images score exactly 0. The metric is differentiable with
respect to both inputs (its own parameters are frozen), so attacks can use it as an objective.

Weights. udcbench downloads nothing: the files must already be on this machine, searched in this order.
  - Backbone (torchvision's ImageNet state dicts, only their `features.*` keys are used, loaded strictly):
    `alexnet-owt-7be5be79.pth` (alex) or `vgg16-397923af.pth` (vgg), looked for in
    1. `$UDCBENCH_LPIPS_DIR/<file>` (or the `weights_dir` argument, which takes its place),
    2. the torch hub cache `$TORCH_HOME/hub/checkpoints/<file>`; TORCH_HOME defaults to
       `$XDG_CACHE_HOME/torch`, else `~/.cache/torch` (where torchvision itself caches them).
  - Linear calibration layers (the `lpips` package's `weights/v0.1/alex.pth` / `vgg.pth`, keys
    `lin0.model.1.weight` ... `lin4.model.1.weight`, each (1, C, 1, 1)), looked for in
    1. `$UDCBENCH_LPIPS_DIR/{alex,vgg}.pth` (or `weights_dir`),
    2. `weights/v0.1/` inside an installed `lpips` package, located with importlib's find_spec without
       importing it (importing lpips imports torchvision).
A missing file raises MissingWeightsError saying which file to put where; an unreadable or mismatched file
raises CheckpointError naming the file and the key.

    >>> d = lpips(restored, ground_truth, net="alex")      # (B,), lower is more similar
    >>> metric = load_lpips("vgg", device="cuda")          # cached module, reused across calls
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.errors import CheckpointError, MissingWeightsError, UnknownNameError
from udcbench.registry import register_metric

NETS = ("alex", "vgg")
# the lpips wheel ships weights/v0.1/*.pth; --no-deps keeps its torch/torchvision requirements from replacing the
# pinned CPU torch (udcbench never imports lpips, it only reads those files)
LPIPS_INSTALL = "pip install -c constraints.txt --no-deps lpips"
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
_BACKBONE_NAMES = {"alex": "AlexNet", "vgg": "VGG16"}
_LINEAR_FILES = {"alex": "alex.pth", "vgg": "vgg.pth"}
_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
_MIN_SIZE = {"alex": 31, "vgg": 16}  # smallest side for which every tapped layer is at least 1x1
_VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


def _check_net(net: str) -> None:
    if net not in NETS:
        raise UnknownNameError(f"LPIPS net must be one of {', '.join(map(repr, NETS))}, got {net!r}")


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))


def _vgg16_features() -> nn.Sequential:
    return vgg_features(_VGG16_CONFIG)


def vgg_features(config: tuple) -> nn.Sequential:
    """torchvision's VGG `features` (conv 3×3 + ReLU, "M" = max-pool) for a layer configuration."""
    layers: list[nn.Module] = []
    channels = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


class _Backbone(nn.Module):
    """torchvision's layout (`features` = nn.Sequential), so its ImageNet state dicts load key for key."""

    def __init__(self, net: str):
        super().__init__()
        self.features = _alexnet_features() if net == "alex" else _vgg16_features()
        self.taps = _TAPS[net]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
                if index == self.taps[-1]:
                    break
        return outputs


# ---------------------------------------------------------------------------------------------- weights

def _torch_hub_checkpoints() -> Path:
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        torch_home = os.path.join(cache, "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def _weights_dir(weights_dir: str | os.PathLike | None) -> Path | None:
    folder = weights_dir if weights_dir is not None else os.environ.get("UDCBENCH_LPIPS_DIR") or None
    return Path(os.path.expanduser(os.fspath(folder))) if folder is not None else None


def _lpips_package_weights() -> list[Path]:
    """The `weights/v0.1` folders of an installed `lpips` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) / "weights" / "v0.1" for location in spec.submodule_search_locations]


def _first_file(candidates: list[Path]) -> Path | None:
    return next((path.resolve() for path in candidates if path.is_file()), None)


def find_weights(net: str = "alex", weights_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(backbone_path, linear_path) for `net`, searched as the module docstring says.

    Raises MissingWeightsError (one line: which file to put where) when either file is absent."""
    _check_net(net)
    folder = _weights_dir(weights_dir)
    backbone_file, linear_file = BACKBONE_FILES[net], _LINEAR_FILES[net]
    hub = _torch_hub_checkpoints()
    backbone = _first_file(([folder / backbone_file] if folder else []) + [hub / backbone_file])
    linear = _first_file(([folder / linear_file] if folder else [])
                         + [location / linear_file for location in _lpips_package_weights()])
    if backbone is not None and linear is not None:
        return backbone, linear
    where = f"{folder} (the weights directory)" if weights_dir is not None else (
        f"$UDCBENCH_LPIPS_DIR (now {folder})" if folder else "$UDCBENCH_LPIPS_DIR (unset)")
    missing = []
    if backbone is None:
        missing.append(f"the {_BACKBONE_NAMES[net]} ImageNet weights {backbone_file} (torchvision's); "
                       f"put the file in {where} or {hub}/")
    if linear is None:
        missing.append(f"the linear layers {linear_file} (weights/v0.1/{linear_file} of the lpips package); "
                       f"put the file in {where} or {LPIPS_INSTALL}")
    raise MissingWeightsError(f"LPIPS ({net}) needs {'; and '.join(missing)} (udcbench downloads nothing)")


def load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of an official weights file, read as models.checkpoints reads checkpoints (never running code)."""
    from udcbench.models.checkpoints import load_file

    try:
        state, _ = load_file(path)
    except CheckpointError as error:
        raise CheckpointError(f"{what}: {error}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {path} is not a state dict of tensors; replace it with the official file")
    return state


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], path: Path, what: str) -> None:
    """Strict: every expected key present with its shape, no extra key among those of this part."""
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"{what} {path} lacks the key {key}; it is not the official file")
        if tuple(state[key].shape) != tuple(shape):
            raise CheckpointError(f"{what} {path}: {key} has shape {tuple(state[key].shape)}, expected "
                                  f"{tuple(shape)}; it is not the official file")
    prefix = next(iter(expected)).split(".")[0] + "."
    extra = sorted(k for k in state if k.startswith(prefix) and k not in expected)
    if extra:
        raise CheckpointError(f"{what} {path} has unexpected key {extra[0]}; it is not the official file "
                              f"(a batch-norm or other variant?)")


def _linear_key(layer: int) -> str:
    return f"lin{layer}.model.1.weight"


# ---------------------------------------------------------------------------------------------- module

class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018) as a frozen module: forward(x, y) -> (B,) for x, y in [0, 1].

    net: "alex" (default, the paper's recommended metric) or "vgg". weights_dir: a folder searched first for
    the files, in place of $UDCBENCH_LPIPS_DIR (default None). Raises MissingWeightsError or CheckpointError.
    """

    def __init__(self, net: str = "alex", weights_dir: str | os.PathLike | None = None):
        super().__init__()
        backbone_path, linear_path = find_weights(net, weights_dir)
        self.net = net
        self.weight_files = (backbone_path, linear_path)
        self.backbone = _Backbone(net)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.linear = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1)) for c in _CHANNELS[net])

        what = f"LPIPS ({net}) backbone"
        state = load_state_dict(backbone_path, what)
        expected = {k: v.shape for k, v in self.backbone.state_dict().items()}
        check_keys(state, expected, backbone_path, what)
        self.backbone.load_state_dict({k: state[k].float() for k in expected}, strict=True)

        what = f"LPIPS ({net}) linear layers"
        state = load_state_dict(linear_path, what)
        check_keys(state, {_linear_key(i): p.shape for i, p in enumerate(self.linear)}, linear_path, what)
        with torch.no_grad():
            for i, parameter in enumerate(self.linear):
                parameter.copy_(state[_linear_key(i)].float())

        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # a metric: always in eval mode

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two (B, 3, H, W) tensors of one shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        if min(x.shape[-2:]) < _MIN_SIZE[self.net]:
            raise ValueError(f"LPIPS ({self.net}) needs images of at least {_MIN_SIZE[self.net]}x"
                             f"{_MIN_SIZE[self.net]} pixels, got {tuple(x.shape[-2:])}")
        dtype = self.shift.dtype
        both = torch.cat([x, y]).to(dtype)
        both = (2 * both - 1 - self.shift) / self.scale
        distance = x.new_zeros(x.shape[0], dtype=dtype)
        for features, weight in zip(self.backbone(both), self.linear):
            # vector_norm's gradient is 0 (not NaN) where every channel is 0, unlike sqrt(sum f²)
            features = features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + _EPS)
            fx, fy = features.chunk(2)
            distance = distance + F.conv2d((fx - fy) ** 2, weight).mean(dim=(1, 2, 3))
        return distance


_CACHE: dict[tuple, LPIPS] = {}


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def load_lpips(net: str = "alex", device: str | torch.device = "cpu") -> LPIPS:
    """The LPIPS module for `net` on `device`, built once per (net, device, weight files) and reused."""
    backbone_path, linear_path = find_weights(net)
    device = torch.device(device)
    key = (net, str(device), _file_key(backbone_path), _file_key(linear_path))
    if key not in _CACHE:
        on_cpu = (net, "cpu", *key[2:])  # checked on the CPU while preparing (check_weights): copied, not re-read
        _CACHE[key] = copy.deepcopy(_CACHE[on_cpu]).to(device) if on_cpu in _CACHE else LPIPS(net).to(device)
    return _CACHE[key]


def check_weights(net: str = "alex") -> None:
    """Find, read and check both weight files now (the metric's `check`, run while a run is prepared), so that
    a missing, broken or hostile file is refused before anything is written."""
    load_lpips(net, "cpu")


def lpips(x: torch.Tensor, y: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """LPIPS v0.1 distance (B,) between x and y in [0, 1], (B, 3, H, W), on x's device, in x's dtype."""
    return load_lpips(net, x.device)(x, y).to(x.dtype if x.is_floating_point() else torch.float32)


def lpips_available(net: str = "alex") -> bool:
    """Whether both weight files for `net` are found (it does not load them); never raises."""
    try:
        find_weights(net)
    except (MissingWeightsError, UnknownNameError, OSError):
        return False
    return True


def lpips_alex(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return lpips(x, y, net="alex")


def lpips_vgg(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return lpips(x, y, net="vgg")


def _register(net: str, backbone: str, function) -> None:
    register_metric(f"lpips-{net}", higher_is_better=False, label="LPIPS", column="lpips", digits=4, tolerance=0.005,
                    pairs=("clean_gt", "adv_gt", "adv_clean"), min_size=_MIN_SIZE[net],
                    needs=f"local {backbone} and LPIPS v0.1 weights ($UDCBENCH_LPIPS_DIR)",
                    check=lambda: check_weights(net),
                    description=f"LPIPS v0.1, {backbone} (Zhang et al. 2018); needs local weights")(function)


_register("alex", "AlexNet", lpips_alex)
_register("vgg", "VGG16", lpips_vgg)
