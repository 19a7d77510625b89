"""The shared modeling core: plain PyTorch, no Lightning."""
from .bert import BERT, BertConfig, BertOutput, combine_layers
from .gpt import GPT, GPTConfig
from .transformer import Transformer, TransformerConfig

__all__ = ["BERT", "BertConfig", "BertOutput", "combine_layers", "GPT", "GPTConfig", "Transformer",
           "TransformerConfig"]
