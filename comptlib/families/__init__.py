"""Built-in families, registered lazily: a family's module is imported when a model of its class is looked up.

:data:`BUILTIN` maps each model class's full path to the module that
registers its family, so looking up a torchvision model imports neither
transformers nor timm. Submodules load on attribute access
(``comptlib.families.vit``). Calling the package, ``comptlib.families()``,
is the deprecated spelling of :func:`comptlib.list_families`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from comptlib.family import Family, register_lazy
from comptlib.family import families as _deprecated_families

BUILTIN: dict[str, str] = {
    "torchvision.models.vision_transformer.VisionTransformer": "comptlib.families.vit",
    "torchvision.models.resnet.ResNet": "comptlib.families.convnet",
    "torchvision.models.convnext.ConvNeXt": "comptlib.families.convnet",
    "transformers.models.clip.modeling_clip.CLIPModel": "comptlib.families.clip",
    "transformers.models.llama.modeling_llama.LlamaForCausalLM": "comptlib.families.decoder_lm",
    "transformers.models.qwen2.modeling_qwen2.Qwen2ForCausalLM": "comptlib.families.decoder_lm",
    "transformers.models.mistral.modeling_mistral.MistralForCausalLM": "comptlib.families.decoder_lm",
    "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel": "comptlib.families.decoder_lm",
    "timm.models.vision_transformer.VisionTransformer": "comptlib.families.timm_vit",
}
"""Model class path -> the module that registers its family."""

OPTIONAL: dict[str, str] = {"comptlib.families.timm_vit": "timm"}
"""Family modules whose library is an optional extra (``pip install 'comptlib[timm]'``)."""

for _path, _module in BUILTIN.items():
    register_lazy(_path, _module)


def import_builtin() -> None:
    """Import (and so register) every built-in family whose library is installed."""
    for module in dict.fromkeys(BUILTIN.values()):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != OPTIONAL.get(module):
                raise


def __getattr__(name: str) -> Any:
    """A submodule, imported on first access (``comptlib.families.vit``)."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


class _CallablePackage(types.ModuleType):
    def __call__(self) -> dict[str, Family]:
        return _deprecated_families()


sys.modules[__name__].__class__ = _CallablePackage
