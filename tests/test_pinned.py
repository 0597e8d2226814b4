"""The numbers a chain trains are pinned: a refactor of the loop must give bit-identical weights and losses.

The hashes were computed with the code before the stage loop was split into
hooks; any change to what a step computes (an extra RNG draw, another order of
operations) shows here first. Float kernels give other last bits on other
machines, so each machine CI has run on has its own set (weights, loss
curves, final held-out loss), all from the same commit and library versions.
"""

import hashlib
import json

import torch

from comptlib import Chain, FeatureMSE
from comptlib.checkpoint import weights_hash
from comptlib.data import digits_loaders
from comptlib.families.vit import build_vit

PINNED = {
    "2026-12-01": (
        [
            "0114a160c363b0a441da45ad4309952e490340978dbb956dafac2fcf7fead7c7",
            "90ca048e365c4016d5808b8c7a0c03870980c24ddfb4fdf9caeacf58fca72cfd",
        ],
        "26147681d692b646a3444abef8518487f9ac754f80ab16204c738ff4ff60ba26",
        2.2691919013318245,
    ),
    "2026-12-02 (AMD EPYC, AVX-512)": (
        [
            "15773a008467013b618ef5888c7948c95db7bc17cac76a8c51fb819029181b79",
            "43e018b934f963686a649c4e6d6380683d7f1999b3fd47d6a378a7e02c9cbf65",
        ],
        "de147de2a98464cbc94394819e14168d60cb544d7defdc252c223a6263cb0cc7",
        2.269194536554448,
    ),
}


def digest(values: list[float]) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def test_a_tiny_chain_trains_the_pinned_numbers(tmp_path) -> None:
    torch.manual_seed(0)
    models = [build_vit(16, 1), build_vit(32, 2)]
    train, val = digits_loaders(batch_size=32)
    settings = {"eval_every": 4, "checkpoint_dir": str(tmp_path), "progress": False}
    # the transfer of the pins, the vision default when they were taken
    chain = Chain(models, budgets=[20, 5], unit="steps", lr=3e-3, transferer=FeatureMSE(), **settings)
    chain.set_params(checkpoint_every=3).fit(train, val)
    curves = [v for record in chain.history_ for key in ("loss", "transfer_loss") for v in record[key]]
    got = ([weights_hash(m) for m in chain.models_], digest(curves), chain.history_[1]["val"][-1]["loss"])
    assert got in PINNED.values(), got
    assert [v["step"] for v in chain.history_[1]["val"]] == [0, 4, 5]
