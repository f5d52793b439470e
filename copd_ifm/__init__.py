"""copd-ifm: implicit feature modification for self-supervised lung-CT and natural-image encoders."""
import warnings

# MONAI and torch-geometric script functions at import time; torch >= 2.9 warns about it in
# every process (also each data-loading worker). It is not ours to fix and says nothing to users.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
