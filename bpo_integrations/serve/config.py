"""The settings of ``bpo serve``: one dataclass, mirrored option for option by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from bpo_integrations.inference.gguf_files import DEFAULT_PRECISION


@dataclass
class ServeConfig:
    """How ``bpo serve`` loads its model and which requests it accepts.

    Token limits left at ``None`` are derived from the model (see :meth:`resolve_limits`).

    Example:
        >>> config = ServeConfig(max_input_tokens=256, max_total_tokens=512)
        >>> config.resolve_limits(model_max_positions=1024)
        (256, 512)
    """

    model: str | None = field(
        default=None,
        metadata={"help": "Model path or Hub id to serve; default: the local backend's model."},
    )
    adapter: str | None = field(
        default=None, metadata={"help": "A PEFT (LoRA) adapter folder to load on top of the model."}
    )
    served_model_name: str | None = field(
        default=None, metadata={"help": "The model id reported by /info and /v1/models."}
    )
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Interface to bind; 0.0.0.0 exposes the server to the network."},
    )
    port: int = field(default=8080, metadata={"help": "TCP port; 0 picks a free one."})
    api_key: str | None = field(
        default=None,
        metadata={"help": "Require 'Authorization: Bearer KEY' on every route but /health."},
    )
    precision: str = field(
        default=DEFAULT_PRECISION,
        metadata={"help": "How the prepared model stores its weights: f16, q8_0 or q4_0."},
    )
    length_rule: bool | None = field(
        default=None,
        metadata={
            "help": "Make raw BPO-template requests write at least as many tokens as their prompt "
            "(the model's own decoding rule); default: on for the default optimizer."
        },
    )
    max_input_tokens: int | None = field(
        default=None, metadata={"help": "Longest prompt accepted, in tokens (TGI's flag)."}
    )
    max_total_tokens: int | None = field(
        default=None,
        metadata={"help": "Prompt plus new tokens, per request (TGI's flag)."},
    )
    max_new_tokens: int = field(
        default=512,
        metadata={"help": "New tokens when a request does not say (clamped to the limit)."},
    )
    max_batch_size: int = field(
        default=16, metadata={"help": "Most requests the engine decodes together."}
    )
    max_queue: int = field(
        default=128,
        metadata={"help": "Requests admitted at once (waiting or running); more get HTTP 429."},
    )
    max_stop_sequences: int = field(
        default=4, metadata={"help": "Most stop sequences per request (TGI's flag)."}
    )
    max_body_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata={"help": "Largest request body accepted, in bytes; larger ones get HTTP 413."},
    )
    graceful_shutdown_s: float = field(
        default=30.0,
        metadata={"help": "On SIGTERM, how long requests in flight may take to finish."},
    )

    def __post_init__(self) -> None:
        positive = {
            "max_new_tokens": self.max_new_tokens,
            "max_batch_size": self.max_batch_size,
            "max_queue": self.max_queue,
            "max_body_bytes": self.max_body_bytes,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_stop_sequences < 0:
            raise ValueError("max_stop_sequences must be >= 0")
        from bpo_integrations.inference.gguf_files import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty: pass a real key, or none to disable authentication")
        if self.max_input_tokens is not None and self.max_total_tokens is not None:
            self.resolve_limits(None)

    def resolve_limits(self, model_max_positions: int | None) -> tuple[int, int]:
        """``(max_input_tokens, max_total_tokens)``, filling unset ones from the model's context.

        Defaults: total = the model's context, capped at 2048 (or ``max_input_tokens`` + 512);
        input = three quarters of the total (BPO rewrites are about as long as the prompt).
        """
        context = model_max_positions or 2048
        total = self.max_total_tokens or min(context, max(2048, (self.max_input_tokens or 0) + 512))
        if self.max_input_tokens is not None:
            max_input = self.max_input_tokens
        else:
            max_input = max(1, total - max(1, total // 4))
        if max_input < 1:
            raise ValueError(f"max_input_tokens must be >= 1, got {max_input}")
        if max_input >= total:
            raise ValueError(
                f"max_input_tokens ({max_input}) must be smaller than max_total_tokens ({total}): "
                "the difference is the room left for new tokens"
            )
        if model_max_positions is not None and total > model_max_positions:
            raise ValueError(
                f"max_total_tokens ({total}) exceeds the model's context of "
                f"{model_max_positions} tokens: lower --max-total-tokens"
            )
        return max_input, total
