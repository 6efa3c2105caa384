import pytest
import torch
from torch import nn

from udcbench.models.base import InputContract, ModelInfo, RestorationModel

torch.set_num_threads(2)


class TinyRestorer(nn.Module):
    """A fixed, seeded 3-layer residual conv net, small enough for fast attack tests. Its weights are scaled
    up 4× so that, like a deblurring network, it amplifies some input directions far more than others."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.GELU(), nn.Conv2d(16, 3, 3, padding=1))
        with torch.no_grad():
            for parameter in self.body.parameters():
                parameter.mul_(4.0)

    def forward(self, x):
        return x + self.body(x)


@pytest.fixture
def tiny_model():
    torch.manual_seed(1234)
    net = TinyRestorer()
    info = ModelInfo(name="tiny", family="tiny", weights="random", parameters=0, contract=InputContract())
    model = RestorationModel(net, info).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture
def images():
    generator = torch.Generator().manual_seed(7)
    gt = torch.rand(4, 3, 32, 32, generator=generator)
    degraded = (0.8 * gt + 0.05 * torch.rand(gt.shape, generator=generator)).clamp(0, 1)
    return degraded, gt
