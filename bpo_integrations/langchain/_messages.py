"""Finding and replacing the user's text in LangChain messages, shared by the Runnable and the
agent middleware.

Only the text changes: a message keeps its id, name and metadata, and in multimodal content only
the first text block is replaced (images and other blocks stay as they are).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

from langchain_core.messages import (
    BaseMessage,
    ChatMessage,
    MessageLikeRepresentation,
    convert_to_messages,
)
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue

PromptInput = Union[  # noqa: UP007 - pydantic builds the input schema from this at runtime
    str, StringPromptValue, ChatPromptValue, list[MessageLikeRepresentation], dict[str, Any]
]
"""What the Runnables accept: a prompt, a prompt value, messages, or a dict holding one of them."""

_HUMAN_ROLES = frozenset({"human", "user"})


def is_human(message: BaseMessage) -> bool:
    """``True`` for a user turn: a ``HumanMessage`` (or chunk), or a user ``ChatMessage``."""
    if isinstance(message, ChatMessage):
        return message.role in _HUMAN_ROLES
    return message.type in _HUMAN_ROLES


def content_text(content: str | list[Any]) -> str | None:
    """The text to optimize: the whole string, or the first text block (``None``: no text)."""
    if isinstance(content, str):
        return content
    for block in content:
        if isinstance(block, str):
            return block
        if isinstance(block, dict) and block.get("type") == "text":
            text = block.get("text")
            return text if isinstance(text, str) else None
    return None


def replace_content_text(content: str | list[Any], text: str) -> str | list[Any]:
    """``content`` with its first text block (or the whole string) replaced by ``text``."""
    if isinstance(content, str):
        return text
    blocks = list(content)
    for index, block in enumerate(blocks):
        if isinstance(block, str):
            blocks[index] = text
            return blocks
        if isinstance(block, dict) and block.get("type") == "text":
            blocks[index] = {**block, "text": text}
            return blocks
    return blocks


def message_text(message: BaseMessage) -> str | None:
    return content_text(message.content)


def with_text(message: BaseMessage, text: str) -> BaseMessage:
    """A copy of ``message`` (same id, name and kwargs) whose text is ``text``; itself if equal."""
    if message_text(message) == text:
        return message
    return message.model_copy(update={"content": replace_content_text(message.content, text)})


def as_message(element: Any) -> BaseMessage:
    """Read any message-like element (message, ``(role, content)``, str, dict) as a message."""
    if isinstance(element, BaseMessage):
        return element
    return convert_to_messages([element])[0]


def element_with_text(element: Any, text: str) -> Any:
    """Replace the text of a message-like element, keeping its form (tuple stays tuple, ...)."""
    if isinstance(element, BaseMessage):
        return with_text(element, text)
    if isinstance(element, str):
        return text
    if isinstance(element, tuple | list) and len(element) == 2:
        role, content = element
        pair_type: Any = type(element)  # a tuple stays a tuple, a list a list
        return pair_type((role, replace_content_text(content, text)))
    if isinstance(element, dict) and "content" in element:
        return {**element, "content": replace_content_text(element["content"], text)}
    raise TypeError(f"cannot replace the text of a {type(element).__name__} message")


def human_indices(messages: Sequence[BaseMessage]) -> list[int]:
    """Positions of the user turns that have text to optimize."""
    return [
        index
        for index, message in enumerate(messages)
        if is_human(message) and message_text(message) is not None
    ]


def last_human_index(messages: Sequence[BaseMessage]) -> int | None:
    """Position of the newest user turn, with or without text (``None``: no user turn)."""
    for index in range(len(messages) - 1, -1, -1):
        if is_human(messages[index]):
            return index
    return None
