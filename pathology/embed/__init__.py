"""Embedding: bags' patches through an encoder into /features/<encoder> (``pathology embed``)."""

from .run import EmbedOptions, embed_bag

__all__ = ["EmbedOptions", "embed_bag"]
