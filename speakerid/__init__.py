"""speakerid: train and evaluate speaker-verification models, and use them.

    import speakerid
    model = speakerid.load("best.pt")        # a checkpoint, an averaged checkpoint or a model file
    model.verify("a.wav", "b.wav")           # score, calibrated LLR, decision (speakerid.speaker_model)

`import speakerid` stays light: torch and the model code are imported when `load` is first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Public names of the Python API, imported on first use (module __getattr__, PEP 562).
_API = {"load": "speakerid.speaker_model", "SpeakerModel": "speakerid.speaker_model",
        "Verification": "speakerid.speaker_model"}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'speakerid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
