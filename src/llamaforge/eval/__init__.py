"""Evaluation: the harness (multiple choice, generation, perplexity) and its CLI."""

from .harness import (
    TaskResult,
    bootstrap_interval,
    continuation_logprobs,
    evaluate,
    evaluate_generation,
    evaluate_multiple_choice,
    exact_match,
    perplexity,
    split_context_continuation,
)

__all__ = [
    "TaskResult",
    "bootstrap_interval",
    "continuation_logprobs",
    "evaluate",
    "evaluate_generation",
    "evaluate_multiple_choice",
    "exact_match",
    "perplexity",
    "split_context_continuation",
]
