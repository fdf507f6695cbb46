"""Receiver <-> sharer alignment: tokens (``tokens``) and layers (``layers``)."""

from .tokens import FALLBACK_CHAT_TEMPLATE, AlignedPrompt, AlignmentStats, TokenAligner, fingerprint

__all__ = ["FALLBACK_CHAT_TEMPLATE", "AlignedPrompt", "AlignmentStats", "TokenAligner", "fingerprint"]

from .layers import LayerMapSpec, build_layer_map, proportional_map, terminal_map  # noqa: E402

__all__ += ["LayerMapSpec", "build_layer_map", "proportional_map", "terminal_map"]
