"""What every schemathesis run of the suite shares: reproducible examples, no deadline."""

from hypothesis import HealthCheck, settings


def fuzz_settings(examples: int) -> settings:
    """``examples`` cases, the same ones every run (no database, derandomized), however slow."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
