"""Growing into a target built on the meta device: allocated once, initialised by the family's rule, same function."""

import pytest
import torch
from test_portable import CASES, _output

import comptlib
from conftest import perturb


@pytest.mark.parametrize("case", CASES)
def test_a_meta_target_grows_into_the_same_function_as_a_built_one(case: str) -> None:
    small, large, options, inputs = CASES[case]
    torch.manual_seed(0)
    source = perturb(small())
    built = comptlib.grow(source, large(), **options).eval()
    with torch.device("meta"):
        empty = large()
    grown = comptlib.grow(source, empty, **options).eval()
    assert not any(t.is_meta for t in [*grown.parameters(), *grown.buffers()])
    assert torch.allclose(_output(grown, inputs), _output(built, inputs), atol=1e-5, rtol=1e-4), case


def test_a_meta_target_draws_its_free_entries_from_the_family_init() -> None:
    """New heads' rows keep torchvision's ViT init (xavier MLPs, zero head), not zeros or garbage."""
    from comptlib.families.vit import build_vit

    with torch.device("meta"):
        empty = build_vit(64, 2)
    grown = comptlib.grow(perturb(build_vit(32, 1)), empty)
    fc1 = grown.encoder.layers[1].mlp[0].weight  # a new block's MLP reader: free entries only
    bound = (6 / sum(fc1.shape)) ** 0.5
    assert fc1.abs().max() <= bound and fc1.std() > bound / 3
    assert torch.isfinite(torch.cat([p.flatten() for p in grown.parameters()])).all()


def test_a_partly_meta_target_is_refused() -> None:
    from comptlib.families.vit import build_vit

    target = build_vit(64, 2)
    with torch.device("meta"):
        target.heads = torch.nn.Sequential(torch.nn.Linear(64, 10))
    target.heads.head = target.heads[0]
    with pytest.raises(ValueError, match="wholly on meta"):
        comptlib.grow(build_vit(32, 1), target)
