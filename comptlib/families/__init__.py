"""Built-in families; importing this package registers them."""

from comptlib.families import vit

__all__ = ["vit"]
