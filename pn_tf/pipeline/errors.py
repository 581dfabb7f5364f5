"""The pipeline's one error type."""


class PipelineError(Exception):
    """A problem the user can fix: the message says what and how (exit status 2)."""
