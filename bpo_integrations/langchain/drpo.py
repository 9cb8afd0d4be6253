"""DRPO as an LCEL step: ``prompt | DRPORunnable(...) | llm``, or with BPO, ``prompt | bpo | drpo
| llm``.

The runnable puts the searched system prompt and the K in-context examples most similar to the
user's message in front of it: a system message, then alternating human / AI example turns,
then the conversation. It comes after BPO (``prompt | bpo | drpo | llm``) for three reasons:

- BPO was trained to rewrite a single user prompt. Placed first, it sees just the user's turn;
  placed after DRPO, a ``BPORunnable(target="all_human")`` would rewrite the examples' queries
  and break the (query, response) pairs the judge scored.
- The model then receives exactly the layout DRPO searched with (system prompt, examples, the
  user's turn), with no later step changing the system prompt or the examples.
- Retrieval reads the rewritten query; BPO keeps the user's content words and adds instructions,
  so the examples found are those of the same topic (a test checks this on the BPO data).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, field_validator

from bpo_integrations.drpo import Alignment, AlignmentArtifact, DRPOAligner
from bpo_integrations.langchain._messages import (
    PromptInput,
    as_message,
    human_indices,
    message_text,
)

DRPOInput = PromptInput
"""What :class:`DRPORunnable` accepts."""

ALIGNMENT_EVENT = "drpo_alignment"
"""Name of the custom event sent per aligned input: the system prompt, the examples' indices,
queries and similarities (:meth:`Alignment.to_dict`)."""

SystemMode = Literal["merge", "replace", "keep"]

_ACCEPTED = (
    "str, StringPromptValue, ChatPromptValue, a list of messages, or a dict holding one of them "
    "under input_key"
)


class DRPORunnable(RunnableSerializable[DRPOInput, Any]):
    """Puts a DRPO alignment (system prompt + K similar examples) in front of the user's turn.

    Takes a ``str`` or ``StringPromptValue`` (returns a ``ChatPromptValue``), a
    ``ChatPromptValue`` (returns one), a list of messages (returns a list of ``BaseMessage``), or
    a dict with one of these under ``input_key`` (returns the dict with it aligned). The examples
    are retrieved with the text of the last human message and inserted, as human / AI turns,
    right after the system message and before the conversation. A system message of the app
    is merged after DRPO's system prompt by default (``system_message="merge"``), dropped
    (``"replace"``), or kept instead of DRPO's (``"keep"``: examples only).

    Example:
        >>> from langchain_core.prompts import ChatPromptTemplate
        >>> drpo = DRPORunnable.from_artifact({
        ...     "format": "drpo-alignment/1", "system_prompt": "You are a careful expert.",
        ...     "k": 1, "examples": [
        ...         {"query": "How do vaccines work?", "response": "They train immunity."},
        ...         {"query": "Bake bread?", "response": "Knead, prove, bake."}]})
        >>> prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
        >>> value = (prompt | drpo).invoke({"question": "Are vaccines safe?"})
        >>> [(m.type, m.content) for m in value.messages]  # doctest: +NORMALIZE_WHITESPACE
        [('system', 'You are a careful expert.'), ('human', 'How do vaccines work?'),
         ('ai', 'They train immunity.'), ('human', 'Are vaccines safe?')]
    """

    aligner: DRPOAligner
    """The loaded artifact and its retriever; a path, dict or artifact is loaded into one."""
    enabled: bool = True
    """``False`` passes every input through unchanged (an A/B switch via configurable_fields)."""
    system_message: SystemMode = "merge"
    """The app's own leading system message: merged after DRPO's, replaced, or kept alone."""
    input_key: str = "input"
    """For dict inputs: the key holding the prompt."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def from_artifact(
        cls,
        artifact: AlignmentArtifact | dict[str, Any] | str | os.PathLike[str],
        *,
        k: int | None = None,
        embeddings: Any = None,
        use_system_prompt: bool = True,
        **kwargs: Any,
    ) -> DRPORunnable:
        """Load ``artifact`` (path, dict or artifact); ``embeddings`` (a LangChain
        ``Embeddings``) ranks examples instead of BM25; ``k`` overrides the artifact's."""
        aligner = DRPOAligner(
            artifact, k=k, embeddings=embeddings, use_system_prompt=use_system_prompt
        )
        return cls(aligner=aligner, **kwargs)

    @field_validator("aligner", mode="before")
    @classmethod
    def _load(cls, value: Any) -> DRPOAligner:
        if isinstance(value, DRPOAligner):
            return value
        if isinstance(value, AlignmentArtifact | dict | str | os.PathLike):
            return DRPOAligner(value)
        raise TypeError(
            f"aligner must be a DRPOAligner, an AlignmentArtifact, or the path or dict of an "
            f"alignment.json, got {type(value).__name__}; use DRPORunnable.from_artifact(path)"
        )

    @property
    def InputType(self) -> Any:
        return DRPOInput

    @property
    def OutputType(self) -> Any:
        return DRPOInput

    def invoke(self, input: DRPOInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config)

    async def ainvoke(
        self, input: DRPOInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config)

    def _invoke(self, input_: DRPOInput, run_manager: CallbackManagerForChainRun) -> Any:
        if not self.enabled:
            return input_
        messages, rebuild = self._read(input_)
        index = self._user_index(messages)
        alignment = self.aligner.select(message_text(messages[index]) or "")
        run_manager.get_child().on_custom_event(
            ALIGNMENT_EVENT, alignment.to_dict(), run_id=run_manager.run_id
        )
        return rebuild(self._align(messages, alignment))

    async def _ainvoke(
        self, input_: DRPOInput, run_manager: AsyncCallbackManagerForChainRun
    ) -> Any:
        if not self.enabled:
            return input_
        messages, rebuild = self._read(input_)
        index = self._user_index(messages)
        alignment = await self.aligner.aselect(message_text(messages[index]) or "")
        await run_manager.get_child().on_custom_event(
            ALIGNMENT_EVENT, alignment.to_dict(), run_id=run_manager.run_id
        )
        return rebuild(self._align(messages, alignment))

    # -- reading and rebuilding inputs --------------------------------------------------------

    def _read(self, value: Any, where: str = "input") -> tuple[list[BaseMessage], Any]:
        if isinstance(value, dict):
            if self.input_key not in value:
                raise ValueError(
                    f"DRPORunnable got a dict without the key {self.input_key!r} (keys: "
                    f"{sorted(map(str, value))}); set input_key= to the key that holds the prompt"
                )
            messages, inner = self._read(value[self.input_key], f"input[{self.input_key!r}]")
            key = self.input_key
            return messages, lambda new: {**value, key: inner(new)}
        if isinstance(value, str):
            return [HumanMessage(value)], lambda new: ChatPromptValue(messages=new)
        if isinstance(value, StringPromptValue):
            return [HumanMessage(value.text)], lambda new: ChatPromptValue(messages=new)
        if isinstance(value, ChatPromptValue):
            return list(value.messages), lambda new: value.model_copy(update={"messages": new})
        if isinstance(value, list):
            try:
                return [as_message(m) for m in value], lambda new: new
            except (TypeError, ValueError, NotImplementedError) as error:
                raise TypeError(
                    f"DRPORunnable could not read {where} as a list of messages ({error}); it "
                    f"accepts {_ACCEPTED}"
                ) from error
        raise TypeError(
            f"DRPORunnable got {type(value).__name__} as {where}; it accepts {_ACCEPTED}"
        )

    @staticmethod
    def _user_index(messages: Sequence[BaseMessage]) -> int:
        indices = human_indices(messages)
        if not indices:
            raise ValueError(
                "DRPORunnable found no human message with text to align: the examples are "
                "chosen by the user's message, so put DRPORunnable after the prompt template "
                "that writes it"
            )
        return indices[-1]

    def _align(self, messages: list[BaseMessage], alignment: Alignment) -> list[BaseMessage]:
        lead = 0
        while lead < len(messages) and isinstance(messages[lead], SystemMessage):
            lead += 1
        own, rest = messages[:lead], messages[lead:]
        system = self._system(own, alignment.system_prompt)
        examples: list[BaseMessage] = []
        for example in alignment.examples:
            examples += [HumanMessage(example.query), AIMessage(example.response)]
        return [*system, *examples, *rest]

    def _system(self, own: list[BaseMessage], prompt: str | None) -> list[BaseMessage]:
        if prompt is None or self.system_message == "keep":
            return own
        if self.system_message == "replace" or not own:
            return [SystemMessage(prompt)]
        first, *others = own
        if isinstance(first.content, str):
            merged = first.model_copy(update={"content": f"{prompt}\n\n{first.content}"})
        else:
            merged = first.model_copy(
                update={"content": [{"type": "text", "text": prompt}, *first.content]}
            )
        return [merged, *others]


RunnableDRPO = DRPORunnable
"""Alias following LangChain's ``RunnableX`` naming."""
