"""How a scripted server says what it is: TGI's ``/info``, ``/v1/models``, and the routes by which
vLLM, SGLang and llama.cpp identify themselves."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bpo_integrations.testing.servers.scripted import ScriptedServer

Flavor = Literal["tgi", "vllm", "sglang", "llamacpp"]
FLAVORS = ("tgi", "vllm", "sglang", "llamacpp")
DEFAULT_VERSIONS = {
    "tgi": "3.3.4-scripted",
    "vllm": "0.32.0",
    "sglang": "0.5.23",
    "llamacpp": "b7000-scripted",
}
_OWNED_BY = {"tgi": "bpo-integrations", "vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp"}


def info(server: ScriptedServer) -> dict[str, Any]:
    return {
        "model_id": server.model_id,
        "model_sha": None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": 128,
        "max_best_of": 2,
        "max_stop_sequences": 4,
        "max_input_tokens": 4096,
        "max_total_tokens": 8192,
        "validation_workers": 2,
        "max_client_batch_size": 4,
        "router": "text-generation-router",
        "version": server.version,
        "sha": None,
        "docker_label": None,
    }


def model_info(server: ScriptedServer) -> dict[str, Any]:
    return {
        "id": server.model_id,
        "object": "model",
        "created": int(time.time()),
        "owned_by": _OWNED_BY[server.flavor],
    }


def model_list(server: ScriptedServer) -> dict[str, Any]:
    base = model_info(server)
    if server.flavor != "tgi":
        base = {**base, "root": server.model_id, "parent": None}
    loras = [
        {**base, "id": name, "root": f"/adapters/{name}", "parent": server.model_id}
        for name in server.lora_modules
    ]
    if server.flavor == "tgi":  # TGI's one ModelInfo, plus the list OpenAI clients read
        return {**model_info(server), "data": [base, *loras]}
    return {"object": "list", "data": [base, *loras]}


def serves(server: ScriptedServer, model: Any) -> bool:
    """Whether an OpenAI request for ``model`` is for this server."""
    names = {server.model_id, *server.lora_modules}
    if not isinstance(model, str):
        return False
    return model in names or (server.flavor == "tgi" and model == "tgi")


def flavor_route(server: ScriptedServer, path: str) -> dict[str, Any] | None:
    """The body of a GET route by which a vLLM, SGLang or llama.cpp server identifies itself."""
    flavor = server.flavor
    if flavor == "vllm" and path == "/version":
        return {"version": server.version}
    if flavor == "sglang" and path in ("/server_info", "/get_server_info"):
        return {
            "model_path": server.model_id,
            "served_model_name": server.model_id,
            "enable_lora": bool(server.lora_modules),
            "version": server.version,
            "frontend": "python",
        }
    if flavor == "sglang" and path in ("/model_info", "/get_model_info"):
        return {"model_path": server.model_id, "is_generation": True}
    if flavor == "llamacpp" and path == "/props":
        return {
            "default_generation_settings": {"n_ctx": 4096, "params": {"temperature": 0.8}},
            "total_slots": 1,
            "model_path": f"/models/{server.model_id}.gguf",
            "build_info": server.version,
            "chat_template": "",
        }
    return None
