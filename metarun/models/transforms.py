"""Which ``torch.func`` transform the current computation runs under: layers whose fused kernels have no correct
batching rule take plain tensor ops under ``vmap``."""

from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters


def under_vmap() -> bool:
    """Whether the current computation runs inside a ``torch.func.vmap`` (at any nesting depth)."""
    return any(interpreter.key() == TransformType.Vmap for interpreter in retrieve_all_functorch_interpreters())
