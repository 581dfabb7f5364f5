"""The graph engine's error, in a module of its own that every graph module may import."""


class GraphAnalysisError(ValueError):
    """The model's gates or layers are inconsistent with channel pruning."""
