"""The text of a completion, whatever form TRL passes it in (plain string or chat messages)."""

from __future__ import annotations


def completion_text(completion) -> str:
    """Text of a plain or conversational completion.

    Args:
        completion (`str`, `list[dict]` or `dict`):
            A plain completion, a list of chat messages (`[{"role": ..., "content": ...}]`, contents concatenated) or
            one message.

    Returns:
        `str`: The completion's text.

    Example:
        >>> completion_text([{"role": "assistant", "content": "By the river."}])
        'By the river.'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(message.get("content", "")) for message in completion if isinstance(message, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(f"completion must be a string or a list of messages, got {type(completion).__name__}")
