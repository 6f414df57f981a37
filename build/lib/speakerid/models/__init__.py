from speakerid.models.ecapa_tdnn import ECAPATDNN

__all__ = ["ECAPATDNN"]
