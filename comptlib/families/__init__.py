"""Built-in families; importing this package registers them."""

from comptlib.families import clip, convnet, decoder_lm, vit

__all__ = ["clip", "convnet", "decoder_lm", "vit"]
