"""Receiver <-> sharer alignment: tokens (``tokens``) and layers (``layers``)."""

from .tokens import FALLBACK_CHAT_TEMPLATE, AlignedPrompt, AlignmentStats, TokenAligner, fingerprint

__all__ = ["FALLBACK_CHAT_TEMPLATE", "AlignedPrompt", "AlignmentStats", "TokenAligner", "fingerprint"]
