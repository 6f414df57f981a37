from speakerid.losses.aam_softmax import AAMSoftmax
from speakerid.losses.am_softmax import AMSoftmax
from speakerid.losses.sub_center_aam import SubCenterAAM

__all__ = ["AAMSoftmax", "AMSoftmax", "SubCenterAAM"]
