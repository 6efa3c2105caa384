"""Make udcbench_plugin_example/weights/resconv.safetensors, the weights this example ships.

udcbench's own training recipe (udcbench.models.train, the one its bundled weights were made with): seed 0 for
the init, the crops, the flips and the batch order; 1500 Adam steps on random 128² crops (batch 8) of udc-mini's
train split with flips, L1 loss through the model's input contract, a cosine schedule from 1e-3, gradient
clipping 0.5, and the EMA (0.995) of the weights is saved. One CPU thread, so that the same command on the same
platform (and torch version) gives the same tensors bit for bit (the header's train_seconds differs). The command,
seed, thread count and udc-mini test PSNR go into the file's safetensors header (22.61 dB degraded -> 26.69 dB
restored). About two minutes on one CPU core.

    python examples/udcbench-plugin-example/make_weights.py            # rewrites the shipped file
    python examples/udcbench-plugin-example/make_weights.py --out /tmp/resconv.safetensors --steps 100

Works whether or not the package is installed: it imports the package from this folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "udcbench_plugin_example" / "weights" / "resconv.safetensors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, crops, flips and batches (default 0)")
    parser.add_argument("--out", type=Path, default=SHIPPED, help=f"output .safetensors (default {SHIPPED})")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    import torch

    import udcbench_plugin_example.model  # noqa: F401  (registers resconv)
    from udcbench.errors import UdcbenchError
    from udcbench.models.train import TrainConfig, train

    torch.set_num_threads(1)
    config = TrainConfig(model="resconv", data="udc-mini", steps=args.steps, seed=args.seed)
    command = f"python examples/udcbench-plugin-example/make_weights.py --steps {args.steps} --seed {args.seed}"
    try:
        meta = train(config, args.out, command=command)
    except UdcbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"saved {args.out} ({args.out.stat().st_size:,} bytes): udc-mini test PSNR "
          f"{meta['test_psnr_degraded']} dB (degraded) -> {meta['test_psnr_restored']} dB (restored)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
