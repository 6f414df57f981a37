"""speakerid: train and evaluate speaker-verification models."""

__version__ = "0.1.0"
