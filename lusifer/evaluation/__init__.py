"""Evaluation of embedders on bitext mining and STS (``lusifer-eval``)."""
