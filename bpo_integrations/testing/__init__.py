"""Helpers for testing code that uses bpo_integrations, offline: tiny models and scripted servers.

``tiny_models`` needs the ``local`` extra; ``servers`` needs only the standard library.
"""
