"""Built-in families; importing this package registers them.

The name ``comptlib.families`` is both this package and the function
:func:`comptlib.family.families`: Python rebinds it to the package the first
time the package is imported. So the package is callable too, and
``comptlib.families()`` returns the registry before and after that import.
"""

import sys
import types

from comptlib.families import clip, convnet, decoder_lm, vit
from comptlib.family import Family
from comptlib.family import families as _registered


class _CallablePackage(types.ModuleType):
    def __call__(self) -> dict[str, Family]:
        return _registered()


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["clip", "convnet", "decoder_lm", "vit"]
