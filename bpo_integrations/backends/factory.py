"""``create(kind, ...)``: the backend a command line or a config names, checked before it is made.

The CLI (``bpo optimize``, ``bpo proxy``, the LiteLLM hook), ``bpo serve`` and the trainer
(``infer``, ``eval``) build their optimizer backends here, so that one kind takes the same options
everywhere and a wrong combination fails the same way.
"""

from __future__ import annotations

import importlib
import os
from enum import Enum
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from bpo_integrations.errors import BPOError
from bpo_integrations.inference.gguf_files import DEFAULT_PRECISION

if TYPE_CHECKING:
    from bpo_integrations.backends.base import Backend
    from bpo_integrations.backends.local import TemplateKind
    from bpo_integrations.inference.gguf_files import Precision


class BackendKind(str, Enum):
    """Where the optimizer model runs: in this process, on a TGI server, or behind an OpenAI API."""

    local = "local"
    tgi = "tgi"
    openai = "openai"


class BackendConfigError(BPOError, ValueError):
    """The options do not describe a backend (a missing endpoint, an option of another kind)."""


class MissingExtraError(BPOError, ImportError):
    """The backend's client library is not installed; the message names the extra to install."""


def create(
    kind: BackendKind | str,
    *,
    endpoint: str | None = None,
    model: str | os.PathLike[str] | None = None,
    adapter: str | os.PathLike[str] | None = None,
    precision: Precision | None = None,
    template: TemplateKind | None = None,
    max_batch_size: int | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
) -> Backend:
    """The backend of ``kind``, made from the options that kind takes.

    ``local`` runs ``model`` (default: the built-in default model; ``adapter``, ``precision``,
    ``template``, ``max_batch_size``) in this process; ``tgi`` needs ``endpoint``, the server's
    URL; ``openai`` needs ``model``, the served name, and takes ``endpoint`` as its base URL.
    ``api_key`` (TGI's token) and ``timeout`` are for the servers.

    Raises:
        BackendConfigError: an option is missing or belongs to another kind.
        MissingExtraError: the kind's extra is not installed.

    Example:
        >>> create("tgi", endpoint="http://localhost:8080").endpoint
        'http://localhost:8080'
        >>> try:
        ...     create("tgi")
        ... except BackendConfigError as error:
        ...     print(error)
        --backend tgi needs --endpoint URL, e.g. --endpoint http://localhost:8080
    """
    try:
        kind = BackendKind(kind)
    except ValueError as error:
        choices = ", ".join(k.value for k in BackendKind)
        raise BackendConfigError(f"unknown backend {kind!r}: choose {choices}") from error
    if kind is BackendKind.local:
        if endpoint:
            raise BackendConfigError(
                "--endpoint is for --backend tgi or openai; the local backend runs the model in "
                "this process (choose it with --model)"
            )
        from bpo_integrations.backends.local import LocalBackend

        options: dict[str, object] = {
            "adapter": adapter,
            "precision": precision or DEFAULT_PRECISION,
        }
        if template is not None:
            options["template"] = template
        if max_batch_size is not None:
            options["max_batch_size"] = max_batch_size
        try:
            return LocalBackend(model, **options)  # type: ignore[arg-type]
        except ValueError as error:
            raise BackendConfigError(str(error)) from error
    if adapter:
        raise BackendConfigError(
            f"--adapter only works with --backend local (the {kind.value} server "
            "loads its own adapter)"
        )
    if precision:
        raise BackendConfigError("--precision only works with --backend local")
    if endpoint is not None:
        _check_url(endpoint)
    server: dict[str, object] = {} if timeout is None else {"timeout": timeout}
    if kind is BackendKind.tgi:
        if not endpoint:
            raise BackendConfigError(
                "--backend tgi needs --endpoint URL, e.g. --endpoint http://localhost:8080"
            )
        if model:
            raise BackendConfigError(
                "--model does not apply to --backend tgi: the server serves one model"
            )
        backend: Backend = _import_backend("tgi").TGIBackend(endpoint, token=api_key, **server)
        return backend
    if not model:
        raise BackendConfigError(
            "--backend openai needs --model NAME, the model name the server serves"
        )
    module = _import_backend("openai")
    try:
        backend = module.OpenAIBackend(str(model), base_url=endpoint, api_key=api_key, **server)
    except ValueError as error:
        raise BackendConfigError(str(error)) from error
    return backend


def _check_url(endpoint: str) -> None:
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BackendConfigError(
            f"--endpoint must be an http(s) URL such as http://localhost:8080, got {endpoint!r}"
        )


def _import_backend(extra: str) -> ModuleType:
    try:
        return importlib.import_module(f"bpo_integrations.backends.{extra}")
    except ImportError as error:
        raise MissingExtraError(
            f"--backend {extra} needs the {extra!r} extra: pip install 'bpo-integrations[{extra}]' "
            f"({error})"
        ) from error
