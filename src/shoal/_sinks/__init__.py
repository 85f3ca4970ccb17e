"""Where settled results go besides the caller: checkpoint, progress, hooks."""
