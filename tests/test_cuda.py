"""What must hold on a CUDA GPU (skipped without one; `benchmarks/gpu_check.py` runs them with `-m cuda`)."""

import dataclasses

import pytest
import torch

from udcbench import api
from udcbench.spec import AttackSpec, DataSpec, ModelSpec, RunSpec

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SPEC = RunSpec(model=ModelSpec("nafnet-nano"), attack=AttackSpec.of("pgd", eps="8/255", steps=3),
               data=DataSpec(limit=2))


def test_a_cuda_run_matches_the_cpu_run():
    cpu = api.run(SPEC)
    gpu = api.run(dataclasses.replace(SPEC, device="cuda"))
    assert (gpu["device"].str.startswith("cuda")).all()
    for column in ("psnr_clean_gt", "psnr_adv_gt", "psnr_adv_clean"):
        assert (gpu[column] - cpu[column]).abs().max() < 0.05, column
    assert (gpu["linf"] <= 8 / 255 + 1e-6).all()


def test_bf16_on_cuda_stays_close_to_fp32():
    fp32 = api.run(dataclasses.replace(SPEC, device="cuda"))
    bf16 = api.run(dataclasses.replace(SPEC, device="cuda", precision="bf16"))
    assert bf16.attrs["run_hash"] != fp32.attrs["run_hash"]
    assert (fp32["psnr_clean_gt"] - bf16["psnr_clean_gt"]).abs().max() < 0.5


def test_checkpointing_on_cuda_gives_the_plain_gradients():
    from udcbench.models import load_model
    from udcbench.models.memory import set_checkpointing

    model = load_model("uformer-nano", device="cuda")
    x = torch.rand(1, 3, 128, 128, device="cuda")
    grads = []
    for enabled in (False, True):
        set_checkpointing(model, enabled)
        inp = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(inp).pow(2).mean(), inp)
        grads.append(grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_compiled_networks_on_cuda_equal_eager():
    from udcbench.models import load_model
    from udcbench.models.compiled import Compiler

    model = load_model("nafnet-nano", device="cuda")
    outcome = Compiler().prepare(model, (2, 3, 64, 64), "cuda")
    assert outcome.verdict in ("compiled", "slower"), outcome.report()
    x = torch.rand(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        assert torch.allclose(outcome.model(x), model(x), rtol=1e-4, atol=1e-5)


def test_an_adm_prior_runs_in_float16_on_cuda_close_to_float32(tmp_path):
    from udcbench.defenses.adm import ADMUNet, parse_adm_config
    from udcbench.defenses.adm_checkpoint import save_adm_state_dict
    from udcbench.defenses.purify import PurifyDefense

    torch.manual_seed(0)
    flags = ("image_size=64,num_channels=64,num_res_blocks=1,channel_mult=1,2,attention_resolutions=32,16,"
             "num_head_channels=32,learn_sigma=true,resblock_updown=true,use_scale_shift_norm=true")
    save_adm_state_dict(ADMUNet(parse_adm_config("adm:" + flags.replace(",2,", "/2,").replace("32,16", "32/16")
                                                 .replace(",", ";"))), tmp_path / "adm.pt")
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for precision in ("fp32", "auto"):  # auto = fp16 on CUDA
        defense = PurifyDefense(f"t=50,prior={tmp_path / 'adm.pt'},config=adm:{flags},precision={precision}")
        defense.ready(None, None, 0, torch.device("cuda"), None)
        outputs[precision] = defense.transform(image.cuda(), torch.Generator().manual_seed(2)).cpu()
    conv = defense.prior.unet.input_blocks[1][0].in_layers[2]
    assert conv.weight.dtype == torch.float16
    assert (outputs["fp32"] - outputs["auto"]).abs().max() < 0.05
