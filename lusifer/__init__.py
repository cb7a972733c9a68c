"""LUSIFER: language-universal embeddings from an English-centric LLM.

The package root stays light: importing ``lusifer`` (or ``lusifer.runtime``) never imports torch.
``LusiferModel`` and the other torch-backed objects are loaded lazily on first attribute access.
"""

from lusifer._version import __version__
from lusifer.config import LusiferConfig

__all__ = ["__version__", "LusiferConfig", "LusiferModel"]


def __getattr__(name: str):
    if name == "LusiferModel":
        from lusifer.modeling import LusiferModel

        return LusiferModel
    raise AttributeError(f"module 'lusifer' has no attribute {name!r}")
