"""LPIPS weight files in the official formats (torchvision backbones, lpips v0.1 linear layers), random
values, written by tests: no real weights exist on the CI machine."""

import torch

ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
ALEX_TAPS, ALEX_CHANNELS = (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)
VGG_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG_TAPS, VGG_CHANNELS = (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


def vgg_convs():
    convs, index, channels = {}, 0, 3
    for item in VGG_CONFIG:
        if item == "M":
            index += 1
        else:
            convs[index] = (item, channels, 3)
            channels, index = item, index + 2
    return convs


def official_backbone(net, seed):
    """A torchvision-format state dict (features.* + classifier.*) with random He-scaled weights."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (out, inp, k) in (ALEX_CONVS if net == "alex" else vgg_convs()).items():
        scale = (2 / (inp * k * k)) ** 0.5
        state[f"features.{index}.weight"] = scale * torch.randn(out, inp, k, k, generator=generator)
        state[f"features.{index}.bias"] = 0.01 * torch.randn(out, generator=generator)
    state["classifier.1.weight"] = torch.randn(10, 16, generator=generator)
    state["classifier.1.bias"] = torch.zeros(10)
    return state


def official_linear(net, seed):
    generator = torch.Generator().manual_seed(seed)
    channels = ALEX_CHANNELS if net == "alex" else VGG_CHANNELS
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for i, c in enumerate(channels)}


BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def write_weights(folder, net, seed=0, backbone=None, linear=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(official_backbone(net, seed) if backbone is None else backbone, folder / BACKBONE_FILES[net])
    torch.save(official_linear(net, seed + 1) if linear is None else linear, folder / f"{net}.pth")
    return folder
