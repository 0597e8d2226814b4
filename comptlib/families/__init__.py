"""Built-in families; importing this package registers them."""

from comptlib.families import convnet, decoder_lm, vit

__all__ = ["convnet", "decoder_lm", "vit"]
