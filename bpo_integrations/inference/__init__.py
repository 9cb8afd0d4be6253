"""In-process inference: the engine the local backend runs on, and how models are prepared for it.

- :mod:`~bpo_integrations.inference.engine`: what an engine offers (requests, streams, sampling).
- :mod:`~bpo_integrations.inference.openvino`: OpenVINO GenAI's continuous batching, the engine.
- :mod:`~bpo_integrations.inference.prepare`: any model reference to an engine-ready folder, cached.
- :mod:`~bpo_integrations.inference.gguf_files`: adapters and fine-tuned weights merged into GGUF.

Nothing here is imported by ``import bpo_integrations``.
"""
