"""Engines for the trainer's data set jobs past one HTTP server: vLLM's offline engine, Ray Data.

- :mod:`bpo_trainer.engines.vllm`: :class:`~bpo_trainer.engines.vllm.VLLMEngineBackend`, vLLM's
  ``LLM.generate`` as an optimizer backend (``bpo-train infer --engine vllm``).
- :mod:`bpo_trainer.engines.ray`: the data set sharded over a Ray cluster with Ray Data, one
  optimizer (one vLLM engine) per worker (``bpo-train infer --engine ray``).

Each imports its engine (``vllm``, ``ray``) only when used: ``pip install -e 'trainer[vllm]'`` or
``'trainer[ray]'``.
"""
