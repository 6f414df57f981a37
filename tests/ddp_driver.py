"""A few training steps of the real configs, under torchrun or in one process, recording the parameters
after every step (used by tests/test_ddp.py; not a test itself).

    python tests/ddp_driver.py OUT_DIR STEPS override [override ...]
    torchrun --standalone --nproc_per_node=2 tests/ddp_driver.py OUT_DIR STEPS override [override ...]

With SPEAKERID_TEST_FROZEN_BN=1 the BatchNorm layers use their running statistics, so that a step depends
on each utterance alone and one process and several can be compared exactly.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from speakerid.distributed import all_gather_objects
from speakerid.configs import compose
from speakerid.training import setup_run



def main() -> None:
    out, steps, overrides = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    run = setup_run(compose("train", overrides))
    if os.environ.get("SPEAKERID_TEST_FROZEN_BN") == "1":
        for module in run.parts.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    run.loader.sampler.set_epoch(0)
    rank_spread = []
    initial = flat = torch.cat([p.detach().flatten() for p in run.parts.parameters]).double().numpy()
    for _, (waves, labels) in zip(range(steps), run.loader.loader):
        run.step(waves, labels)
        flat = torch.cat([p.detach().flatten() for p in run.parts.parameters]).double().numpy()
        everyone = all_gather_objects(flat, run.env.dist)
        rank_spread.append(max(float(np.abs(x - everyone[0]).max()) for x in everyone))
    if run.env.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "initial.npy", initial)
        np.save(out / "params.npy", flat)
        (out / "info.json").write_text(json.dumps({
            "world_size": run.env.dist.world_size, "steps": len(rank_spread), "rank_spread": rank_spread,
            "per_rank_batch": run.loader.loader.batch_size}))
    run.close()


if __name__ == "__main__":
    main()
