"""deformvision: deformable attention for vision in PyTorch.

DAT (Vision Transformer with Deformable Attention), Deformable DETR and deformable
convolution, in pure PyTorch with fused kernels where a GPU is present.

>>> import deformvision as dv
>>> model = dv.create_model("dat_tiny", num_classes=10)
"""

from deformvision import ops
from deformvision.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "ops", "__version__"]
