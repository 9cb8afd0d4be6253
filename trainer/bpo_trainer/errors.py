"""The error a stage raises for bad configuration or input: it names the problem and the fix."""

from __future__ import annotations


class TrainerConfigError(ValueError):
    """A stage's config or input data is unusable; the message says what to change.

    ``bpo-train`` prints it without a traceback and exits with status 2.
    """


class StageFailedError(RuntimeError):
    """A stage stopped part-way for an outside reason (a backend down); the message says how to
    resume. ``bpo-train`` prints it without a traceback and exits with status 1."""
