from speakerid.losses.aam_softmax import AAMSoftmax

__all__ = ["AAMSoftmax"]
