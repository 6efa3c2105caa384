"""A small synthetic results folder with values known by hand: 2 models × 2 defenses × (pgd at 2/255 and
8/255, cw without eps), 3 images each, gray-box, seed 0.

psnr_adv_gt of a cell is psnr_mean(...) + (-1, 0, +1) over its three images: mean psnr_mean, sample std 1.
ssim_adv_gt is 0.5 + (-0.01, 0, +0.01): mean 0.5 for every cell, std 0.01. lpips_adv_gt is 0.3 - psnr / 100.
"""

from udcbench.runner.store import COLUMN_NAMES, ResultStore

MODELS = ("model-a", "model-b")
DEFENSES = ("none", "jpeg:75")
ATTACKS = (("pgd", 2 / 255), ("pgd", 8 / 255), ("cw", None))
IMAGES = ("img0", "img1", "img2")
OFFSETS = (-1.0, 0.0, 1.0)


def psnr_mean(model, defense, attack, eps, threat="gray-box"):
    base = 25.0 if attack == "cw" else 30.0 - round(eps * 255)
    return base + (0.5 if model == "model-b" else 0.0) + (1.0 if defense != "none" else 0.0) \
        + (-2.0 if threat == "adaptive" else 0.0)


def make_row(model, defense, attack, eps, image_index, threat="gray-box", seed=0, **extra):
    psnr = psnr_mean(model, defense, attack, eps, threat) + OFFSETS[image_index]
    row = {name: None for name in COLUMN_NAMES}
    row.update(run_hash=f"{model}-{defense}-{attack}-{eps}-{threat}-{seed}", image=IMAGES[image_index],
               model=model, weights="bundled:x.safetensors", defense=defense, threat=threat, attack=attack,
               objective="mse-clean", norm="l2" if attack == "cw" else "linf", eps=eps,
               steps=100 if attack == "cw" else 10, data="udc-mini", split="test", seed=seed,
               eot=None, psnr_clean_gt=32.0 + OFFSETS[image_index], ssim_clean_gt=0.9,
               psnr_adv_gt=psnr, ssim_adv_gt=0.5 + OFFSETS[image_index] / 100,
               psnr_adv_clean=psnr + 1.0, ssim_adv_clean=0.6, lpips_adv_gt=0.3 - psnr / 100)
    row.update(extra)
    return row


def fast_store(path):
    """A ResultStore that skips fsync (one transaction per row makes test setup disk-bound otherwise)."""
    store = ResultStore(path)
    store.conn.execute("PRAGMA synchronous=OFF")
    return store


def write_grid(folder, threats=("gray-box",), seeds=(0,), images=3):
    folder.mkdir(parents=True, exist_ok=True)
    store = fast_store(folder / "results.db")
    for model in MODELS:
        for defense in DEFENSES:
            for attack, eps in ATTACKS:
                for threat in threats:
                    for seed in seeds:
                        for index in range(images):
                            store.add(make_row(model, defense, attack, eps, index, threat, seed))
    store.close()
    return folder


def grid_rows(folder):
    from udcbench.runner.store import open_existing

    store = open_existing(folder)
    try:
        return store.rows()
    finally:
        store.close()
