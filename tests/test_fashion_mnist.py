"""Fashion-MNIST from Debian's package: the loader, its errors, and the recipes' ladders."""

import gzip

import pytest
import torch

import comptlib
from comptlib.data import FASHION_MNIST_ENV, fashion_mnist_loaders, load_fashion_mnist
from comptlib.errors import DataError
from comptlib.recipes import RECIPES


def test_the_full_splits_load_with_their_labels() -> None:
    train, test = load_fashion_mnist()
    assert train.tensors[0].shape == (60_000, 1, 28, 28) and test.tensors[0].shape == (10_000, 1, 28, 28)
    assert train.tensors[0].dtype == torch.uint8 and torch.bincount(test.tensors[1]).tolist() == [1000] * 10


def test_the_loaders_augment_reproducibly_and_keep_the_test_set() -> None:
    torch.manual_seed(0)
    first = next(iter(fashion_mnist_loaders(32, train_size=500, seed=1)[0]))
    torch.manual_seed(0)
    train, test = fashion_mnist_loaders(32, train_size=500, seed=1)
    again = next(iter(train))
    assert torch.equal(first[0], again[0]) and tuple(first[0].shape) == (32, 3, 28, 28)
    assert len(train.dataset) == 500 and len(test.dataset) == 10_000
    plain = next(iter(fashion_mnist_loaders(32, augment=False, train_size=500, seed=1)[0]))
    assert not torch.equal(plain[0], first[0])  # the crops and flips did something
    assert abs(plain[0].mean().item()) < 0.3 and 0.7 < plain[0].std().item() < 1.3  # standardised


def test_a_missing_or_broken_copy_names_the_place_and_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get download dataset-fashion-mnist"):
        load_fashion_mnist()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0\0\0\x02" * 3 + b"x"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is truncated"):
        load_fashion_mnist()


@pytest.mark.parametrize("recipe", ["fashion-vit", "fashion-resnet"])
def test_the_ladders_grow_exactly_at_about_twice_the_parameters(recipe) -> None:
    torch.manual_seed(0)
    models = RECIPES[recipe].models((*RECIPES[recipe].sizes, "128x5") if recipe == "fashion-vit" else None)
    x = torch.randn(2, 3, 28, 28)
    for small, large in zip(models, models[1:]):
        with torch.no_grad():
            for p in small.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        ratio = sum(p.numel() for p in large.parameters()) / sum(p.numel() for p in small.parameters())
        assert 1.7 < ratio < 2.4, ratio
        comptlib.grow(small.eval(), large.eval())
        torch.testing.assert_close(large(x), small(x), rtol=1e-4, atol=1e-5)
