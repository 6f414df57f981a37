"""Training, in four parts:

| module | concern |
| --- | --- |
| `run.py` | `train(cfg)` and `setup_run(cfg)`: the table of contents of a run |
| `setup.py` | one function per part: environment and run folder, lists, model and head, wrappers, optimisation, augmentation, loader |
| `step.py` | `TrainingStep`: augmentation, features, forward, backward, optimizer (results stay on the device) |
| `loop.py` | `fit(run)`: epochs, logging cadence, stop signals, checkpoint cadence, validation |
| `state.py` | `RunState`: progress, what a checkpoint holds, save, restore, which run to resume |
"""

from speakerid.training.loop import NonFiniteLossError
from speakerid.training.run import Run, setup_run, train
from speakerid.training.step import StepResult, TrainingStep

__all__ = ["NonFiniteLossError", "Run", "StepResult", "TrainingStep", "setup_run", "train"]
