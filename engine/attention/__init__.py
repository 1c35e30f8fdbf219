"""Attention backends behind one interface: torch SDPA (reference, CPU) and xformers (CUDA)."""

from engine.attention.base import AttentionBackend, BatchLayout
from engine.attention.torch_sdpa import TorchBackend
from engine.attention.xformers_paged import XformersBackend, select_backend

__all__ = ["AttentionBackend", "BatchLayout", "TorchBackend", "XformersBackend", "select_backend"]
