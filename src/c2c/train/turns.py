"""One data row -> one conversation: the instruction turns and the response turn, whatever the layout.

Layouts (one file may mix them row by row with ``layout="auto"``):

- ``messages``: ``[{"role": "user", "content": ...}, ...]``
- ``conversations`` (OpenHermes / ShareGPT): ``[{"from": "human", "value": ...}, ...]``
- ``prompt_response``: two text fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from c2c.train.config import Layout
from c2c.train.errors import DataError

__all__ = ["Conversation", "Fields", "Turn", "extract_conversation"]

Turn = dict[str, str]
"""``{"role": ..., "content": ...}`` with a normalised role and text content."""

_ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}


@dataclass
class Fields:
    """Where each layout keeps its turns."""

    layout: Layout = "auto"
    messages: str = "messages"
    conversations: str = "conversations"
    prompt: str = "prompt"
    response: str = "response"


@dataclass
class Conversation:
    """One training example before rendering.

    Attributes:
        instruction: every turn before the response (at least one user turn).
        response: the last assistant turn.
        from_text_fields: the row had plain ``prompt``/``response`` fields (the instruction is one user turn).
    """

    instruction: list[Turn]
    response: Turn
    from_text_fields: bool

    @property
    def messages(self) -> list[Turn]:
        return [*self.instruction, self.response]


def extract_conversation(row: dict[str, Any], fields: Fields, where: str) -> Conversation:
    """Normalise one row; turns after the last assistant turn are dropped (the response is the last
    assistant turn)."""
    layout = fields.layout
    if layout == "auto":
        if row.get(fields.messages) is not None:
            layout = "messages"
        elif row.get(fields.conversations) is not None:
            layout = "conversations"
        elif row.get(fields.prompt) is not None and row.get(fields.response) is not None:
            layout = "prompt_response"
        else:
            present = sorted(k for k, v in row.items() if v is not None)
            raise DataError(
                f"{where}: no '{fields.messages}', '{fields.conversations}' or '{fields.prompt}'/'{fields.response}' "
                f"fields (found {present}); name the fields with messages_field / conversations_field / "
                "prompt_field / response_field"
            )
    if layout == "prompt_response":
        prompt, response = row.get(fields.prompt), row.get(fields.response)
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError(f"{where}: '{fields.prompt}' and '{fields.response}' must both be strings")
        return Conversation([{"role": "user", "content": prompt}], {"role": "assistant", "content": response}, True)

    if layout == "messages":
        turns, role_key, text_key, name = row.get(fields.messages), "role", "content", fields.messages
    else:
        turns, role_key, text_key, name = row.get(fields.conversations), "from", "value", fields.conversations
    if not isinstance(turns, (list, tuple)) or not turns:
        raise DataError(f"{where}: '{name}' must be a non-empty list of turns, got {turns!r:.80}")
    messages: list[Turn] = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get(role_key) is None:
            raise DataError(f"{where}: turn {t} of '{name}' must be an object with '{role_key}' and '{text_key}'")
        raw_role = str(turn[role_key])
        role = _ROLE_MAP.get(raw_role.lower())
        if role is None:
            raise DataError(
                f"{where}: turn {t} has unknown role {raw_role!r}; known roles: {', '.join(sorted(_ROLE_MAP))}"
            )
        messages.append({"role": role, "content": _text(turn.get(text_key), where, t)})
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(
            f"{where}: the conversation has no assistant turn, so there is no response to train on; "
            "remove the row or add the assistant's reply"
        )
    if not any(m["role"] == "user" for m in messages[:last]):
        raise DataError(f"{where}: no user turn before the assistant's reply; nothing to condition the response on")
    return Conversation(messages[:last], messages[last], False)


def _text(content: Any, where: str, turn: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style parts: keep the text parts
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"]
        if len(parts) == len(content):
            return "".join(str(p) for p in parts)
    raise DataError(f"{where}: turn {turn} content must be text, got {type(content).__name__}")
