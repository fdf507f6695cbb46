"""Receiver <-> sharer alignment: tokens (``tokens``; the "offsets" strategy in ``offsets``, UTF-8 groups in
``utf8``, the sharer's special-token frame in ``specials``, tokenizer facts in ``vocab``), the aligned record
(``records``), chat rendering (``chat``), the reference row layout (``reference``) and layers (``layers``)."""

from .tokens import AlignedPrompt, AlignmentStats, TokenAligner, fingerprint

__all__ = ["AlignedPrompt", "AlignmentStats", "TokenAligner", "fingerprint"]

from .layers import LayerMapSpec, build_layer_map, proportional_map, terminal_map

__all__ += ["LayerMapSpec", "build_layer_map", "proportional_map", "terminal_map"]
