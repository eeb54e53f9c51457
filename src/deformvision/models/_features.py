"""The backbone contract shared by every model family that can feed a detector."""

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a ``features_only`` backbone returns: channels, stride w.r.t. the input, stage index."""

    channels: int
    stride: int
    index: int
