"""A Hugging Face model card (``README.md`` with YAML metadata) for a stage, from its record.

It tells a reader of a pushed stage where the model came from: its parent,
how it was grown and how far growth moved its function, how it was
distilled, on what data, for how long, and what it reached.
"""

from __future__ import annotations

import json
from typing import Any


def _growth(record: dict[str, Any]) -> dict[str, Any] | None:
    """The grower and, where the record has it, its measured function error (:class:`~comptlib.GrowthCheck`)."""
    grower = record.get("settings", {}).get("grower")
    if grower is None:
        return None
    out = {"grower": grower.get("class"), "method": grower.get("method")}
    check = record.get("growth")
    out["function_error"] = check if check is not None else "not measured"
    return out


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    settings = record.get("settings", {})
    final = record["val"][-1] if record.get("val") else None
    after_growth = record["val"][0] if record.get("parent") and record.get("val") else None
    meta = {
        "stage": record.get("name"),
        "parent": record.get("parent"),
        "growth": _growth(record),
        "transfer": settings.get("transfer"),
        "steps": record.get("steps"),
        "budget": record.get("budget"),
        "data_fingerprint": settings.get("data"),
        "held_out": final,
        "held_out_after_growth": after_growth,
        "flops": record.get("flops"),
        "params": record.get("params"),
        "weights_sha256": record.get("weights_sha256"),
    }
    return {k: v for k, v in meta.items() if v is not None}


def model_card(record: dict[str, Any]) -> str:
    """The card's text: YAML front matter (``library_name``, ``tags``, ``comptlib``: the stage) and a summary.

    >>> card = model_card({"name": "m1", "parent": "m0", "steps": 10, "val": [{"step": 0, "loss": 2.0}],
    ...                    "settings": {"grower": {"class": "DecoderLMGrower", "method": "exact"}, "data": "ab12"}})
    >>> card.splitlines()[:4]
    ['---', 'library_name: transformers', 'tags: ["comptlib", "chain-of-models"]', 'comptlib:']
    >>> "grown from `m0`" in card
    True
    """
    meta = _metadata(record)
    lines = ["---", "library_name: transformers", 'tags: ["comptlib", "chain-of-models"]', "comptlib:"]
    lines += [f"  {key}: {json.dumps(value, default=str)}" for key, value in meta.items()]
    lines += ["---", "", f"# {record.get('name', 'model')}", ""]
    if record.get("parent"):
        growth = meta.get("growth") or {}
        lines.append(f"A Chain-of-Models Pre-Training stage, grown from `{record['parent']}` ({growth.get('method')}).")
    else:
        lines.append("The first model of a Chain-of-Models Pre-Training chain.")
    lines += [
        "",
        "Trained with [comptlib](https://github.com/comptlib/comptlib); the metadata above records its lineage.",
    ]
    return "\n".join(lines) + "\n"
