from speakerid.models.campplus import CAMPPlus
from speakerid.models.ecapa_tdnn import ECAPATDNN
from speakerid.models.resnet import ResNet

__all__ = ["CAMPPlus", "ECAPATDNN", "ResNet"]
