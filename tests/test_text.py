"""Pre-training text data: BPE tokenizers, datasets sources, packed windows, token files read by offset."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from comptlib import text
from comptlib.data import load_text
from comptlib.families.decoder_lm import build_llama, evaluate_lm

CPU = torch.device("cpu")
SAMPLE = "def f(x):\n    return 'né' + \"€\" + '\U0001f600'  \n\n\tx = 1\n"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A 512-token byte-level BPE trained on 60 kB of stdlib source, and its folder."""
    out = tmp_path_factory.mktemp("bpe")
    return text.train_tokenizer("stdlib", 512, out, max_bytes=60_000), out


@pytest.fixture(scope="module")
def source_text() -> str:
    return load_text(max_bytes=6_000)


@pytest.fixture
def corpus(tmp_path: Path, source_text: str) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(6):
        (folder / f"doc{i}.txt").write_text(f"document {i}: né € \U0001f600 " + source_text[: 3_000 + 500 * i])
    return folder


# -- tokenizers ------------------------------------------------------------------
def test_trained_bpe_saves_a_folder_autotokenizer_loads_offline(bpe):
    from transformers import AutoTokenizer

    tokenizer, out = bpe
    assert len(tokenizer) == 512 and tokenizer.eos_token == text.EOS
    again = AutoTokenizer.from_pretrained(out, local_files_only=True)
    bare = text.load_tokenizer(out / "tokenizer.json")  # a lone tokenizer.json: EOS found in its vocabulary
    for other in (again, text.load_tokenizer(out), bare):
        assert other(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"] and other.eos_token_id == 0
    ids = tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == SAMPLE and len(ids) < len(SAMPLE.encode())  # byte-level: lossless, and merges
    with pytest.raises(ValueError, match="vocab_size"):
        text.train_tokenizer("stdlib", 100, out / "tiny", max_bytes=1_000)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        text.load_tokenizer(out / "missing")


def test_token_bytes_sum_to_the_text_and_survive_long_tokens(bpe):
    tokenizer, _ = bpe
    enc = tokenizer(SAMPLE, add_special_tokens=False, return_offsets_mapping=True)
    counts = text._token_bytes(SAMPLE, enc["offset_mapping"])
    assert len(counts) == len(enc["input_ids"]) and counts.sum() == len(SAMPLE.encode()) and counts.min() >= 0
    ascii_text = "for i in range(10):\n    print(i)  # ok\n"
    enc = tokenizer(ascii_text, add_special_tokens=False, return_offsets_mapping=True)
    lengths = [len(tokenizer.convert_ids_to_tokens(i)) for i in enc["input_ids"]]  # a byte-level token: 1 char a byte
    assert text._token_bytes(ascii_text, enc["offset_mapping"]).tolist() == lengths
    assert text._fit_bytes(np.array([3, 600, 1, 0, 0])).tolist() == [3, 255, 255, 91, 0]


# -- documents -------------------------------------------------------------------
def test_documents_from_text_files_one_per_file_cut_at_max_bytes(corpus):
    docs = list(text.documents(corpus))
    assert len(docs) == 6 and docs[0].startswith("document 0: né")
    assert "".join(docs) == load_text(corpus)
    cut = list(text.documents(corpus, max_bytes=len(docs[0].encode()) + 10))
    assert len(cut) == 2 and cut[0] == docs[0] and cut[1] == docs[1][:10]


def test_documents_from_jsonl_parquet_and_a_saved_dataset(tmp_path):
    import datasets

    rows = [{"id": i, "body": f"row {i} né"} for i in range(5)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert list(text.documents(tmp_path / "a.jsonl", text_column="body")) == [r["body"] for r in rows]
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "b.parquet"))
    assert list(text.documents(tmp_path / "b.parquet", text_column="body"))[-1] == "row 4 né"
    splits = datasets.DatasetDict({"train": table, "validation": table.select([0])})
    splits.save_to_disk(str(tmp_path / "saved"))
    assert len(list(text.documents(tmp_path / "saved", text_column="body"))) == 5
    assert list(text.documents(tmp_path / "saved", text_column="body", split="validation")) == ["row 0 né"]
    with pytest.raises(ValueError, match="no text column 'text'"):
        list(text.documents(tmp_path / "a.jsonl"))


# -- token files -----------------------------------------------------------------
def test_write_tokens_packs_documents_with_eos_and_counts_their_bytes(bpe, corpus, tmp_path):
    tokenizer, _ = bpe
    docs = list(text.documents(corpus))
    file = text.write_tokens(docs, tokenizer, tmp_path / "tokens.bin", chunk_docs=4)
    expected = [t for d in docs for t in [*tokenizer(d, add_special_tokens=False)["input_ids"], file.eos_id]]
    assert file.dtype == "uint16" and file.vocab_size == 512 and file.num_tokens == len(expected)
    assert np.fromfile(tmp_path / "tokens.bin", dtype=np.uint16).tolist() == expected  # nanoGPT's .bin layout
    assert file.num_bytes == sum(len(d.encode()) for d in docs) == int(file.byte_counts(0, file.num_tokens).sum())
    ends = np.flatnonzero(file.tokens(0, file.num_tokens) == file.eos_id)
    assert len(ends) == 6 and (file.byte_counts(0, file.num_tokens)[ends] == 0).all()
    one_chunk = text.write_tokens(docs, tokenizer, tmp_path / "again.bin", chunk_docs=100)
    assert (tmp_path / "again.bin").read_bytes() == (tmp_path / "tokens.bin").read_bytes()
    assert (tmp_path / "again.bin.bytes").read_bytes() == (tmp_path / "tokens.bin.bytes").read_bytes()
    assert one_chunk.num_tokens == file.num_tokens and not list(tmp_path.glob("*.partial"))


def test_token_windows_read_a_large_generated_file_by_offset(tmp_path):
    """A 24 MB uint32 file: each window is read from its offset, nothing is loaded whole."""
    n, seq = 6_000_000, 100
    ids = np.arange(n, dtype=np.uint32) % 70_000  # ids above uint16's range
    ids.tofile(tmp_path / "big.bin")
    np.ones(n, dtype=np.uint8).tofile(tmp_path / "big.bin.bytes")
    meta = {"dtype": "uint32", "num_tokens": n, "num_bytes": n, "vocab_size": 70_000, "eos_id": 0}
    (tmp_path / "big.bin.json").write_text(json.dumps(meta))
    file = text.TokenFile.open(tmp_path / "big.bin")
    windows = text.TokenWindows(file, seq)
    assert len(windows) == n // seq
    for index in (0, 1, 31_337, len(windows) - 1):
        row = windows[index]
        assert row["input_ids"].tolist() == (np.arange(index * seq, (index + 1) * seq) % 70_000).tolist()
        assert row["num_bytes"].item() == seq - 1 and bool(row["attention_mask"].all())
    windows.remap_every = 3  # short-lived maps give the same rows; a pickled copy (a worker's) maps the file anew
    assert all(
        windows[i]["input_ids"].tolist() == (np.arange(i * seq, (i + 1) * seq) % 70_000).tolist() for i in range(8)
    )
    copy = pickle.loads(pickle.dumps(windows))
    assert copy._maps is None and torch.equal(copy[7]["input_ids"], windows[7]["input_ids"])
    tail = text.TokenWindows(file, seq, n - 150, pad_tail=True)
    assert len(tail) == 2 and tail[1]["attention_mask"].sum() == 50 and tail[1]["num_bytes"].item() == 49
    with pytest.raises(IndexError):
        tail[2]
    with pytest.raises(FileNotFoundError, match="write_tokens"):
        text.TokenFile.open(tmp_path / "other.bin")


# -- loaders ---------------------------------------------------------------------
def test_lm_loaders_split_cache_and_bits_per_byte(bpe, corpus, tmp_path, monkeypatch):
    tokenizer, _ = bpe
    cache = tmp_path / "cache"
    train, val = text.lm_loaders(corpus, tokenizer, batch_size=4, seq_len=32, cache=cache, seed=1)
    file = train.dataset.file
    assert file.path.parent == cache and len(list(cache.glob("*.bin"))) == 1
    batch = next(iter(train))
    assert batch["input_ids"].shape == (4, 32) and set(batch) == {"input_ids", "attention_mask", "num_bytes"}

    # training windows tile the stream up to the split, the held-out rows are exactly the rest
    split = train.dataset.stop
    rows = torch.stack([train.dataset[i]["input_ids"] for i in range(len(train.dataset))]).flatten()
    stream = torch.from_numpy(file.tokens(0, file.num_tokens).astype(np.int64))
    assert torch.equal(rows, stream[: rows.numel()]) and rows.numel() <= split
    val_ids = torch.cat([b["input_ids"] for b in val])
    val_mask = torch.cat([b["attention_mask"] for b in val]).bool()
    assert torch.equal(val_ids[val_mask], stream[split:])
    predicted_bytes = sum(
        int(
            file.byte_counts(
                val.dataset.start + i * 32 + 1, min(val.dataset.start + (i + 1) * 32, file.num_tokens)
            ).sum()
        )
        for i in range(len(val.dataset))
    )
    assert int(torch.cat([b["num_bytes"] for b in val]).sum()) == predicted_bytes

    # bits per byte: the same nats over the bytes the predicted tokens cover, not over tokens
    scores = evaluate_lm(build_llama(32, 1, vocab_size=len(tokenizer)), val, CPU)
    assert scores["bits_per_byte"] == pytest.approx(
        scores["bits_per_token"] * int(val_mask.sum() - len(val_mask)) / predicted_bytes
    )

    # tokenized once: an unchanged corpus and tokenizer read the cache, a changed tokenizer or corpus is tokenized again
    monkeypatch.setattr(text, "write_tokens", lambda *a, **k: pytest.fail("tokenized twice"))
    again, _ = text.lm_loaders(corpus, tokenizer, batch_size=4, seq_len=32, cache=cache)
    assert again.dataset.file == file
    monkeypatch.undo()
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["né €"])
    retokenized, _ = text.lm_loaders(corpus, other, batch_size=4, seq_len=32, cache=cache)
    assert retokenized.dataset.file.path != file.path and retokenized.dataset.file.num_tokens < file.num_tokens
    (corpus / "doc9.txt").write_text("one more document")
    changed, _ = text.lm_loaders(corpus, tokenizer, batch_size=4, seq_len=32, cache=cache)
    assert changed.dataset.file.path != file.path and changed.dataset.file.num_tokens > file.num_tokens

    # a token file is its own source; a separate held-out source replaces the split
    direct, held_out = text.lm_loaders(
        file.path, batch_size=4, seq_len=32, val_source=corpus / "doc0.txt", tokenizer=tokenizer, cache=cache
    )
    assert direct.dataset.file == file and len(direct.dataset) == file.num_tokens // 32
    assert held_out.dataset.file.num_bytes == len((corpus / "doc0.txt").read_bytes())
    with pytest.raises(ValueError, match="shorter seq_len"):
        text.lm_loaders(corpus / "doc0.txt", tokenizer, batch_size=64, seq_len=512, cache=cache)
