"""`train.py` under torchrun with a real SIGTERM delivered to ONE rank (RANK == R) after run step N, as a
scheduler that signals a single process would (used by tests/test_ddp.py; not a test itself).

    torchrun --standalone --nproc_per_node=2 tests/stop_one_rank_driver.py R N override [override ...]

Each rank prints `rank <r> exit <status>` when train.py ends.
"""

import os
import signal
import sys

from speakerid.cli.train import launch
from speakerid.training import loop

RANK = int(os.environ.get("RANK", "0"))


def main() -> None:
    target, at_step, overrides = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    stop_requested = loop.Loop.stop_requested

    def signal_one_rank(self, log_step):
        if RANK == target and self.run.state.progress.step == at_step and self.stop.received is None:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the run's StopSignal on this rank only
        return stop_requested(self, log_step)

    loop.Loop.stop_requested = signal_one_rank
    status = 0
    try:
        launch(overrides, "python train.py")
    except SystemExit as e:
        status = e.code
        raise
    finally:
        print(f"rank {RANK} exit {status}", flush=True)


if __name__ == "__main__":
    main()
