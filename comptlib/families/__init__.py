"""Built-in families; importing this package registers them."""

from comptlib.families import decoder_lm, vit

__all__ = ["decoder_lm", "vit"]
