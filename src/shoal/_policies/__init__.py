"""Pure decisions: retry, rate limit, chunk sizes, the auto backend choice."""
