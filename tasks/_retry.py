"""The retry condition every prefect-dintero task uses: transient failures only."""

from __future__ import annotations

from typing import Any


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only errors flagged ``retryable`` (rate limits, 5xx, network).

    Bad credentials, a used or expired code, a mismatched redirect URI, bad input: a retry cannot
    fix these, so the task fails at once with the error's message.
    """
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as error:  # the result itself could not be read: retrying won't help
        exc = error
    return bool(getattr(exc, "retryable", False))
