"""llamaforge: the complete Llama 2 system in one hackable PyTorch package."""

from .checkpoint import load_model, save_model
from .model import ModelArgs, Transformer

__version__ = "0.1.0"


def __getattr__(name: str):
    # The tokenizer needs sentencepiece; import it only when asked for.
    if name == "Tokenizer":
        from .tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'llamaforge' has no attribute {name!r}")


__all__ = ["ModelArgs", "Transformer", "Tokenizer", "load_model", "save_model", "__version__"]
