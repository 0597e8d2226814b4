"""Language-model data as pre-training does it: real tokenizers, documents packed into windows, token files on disk.

The byte-level path of :mod:`comptlib.data` reads a corpus whole into memory.
This module is the other path, for any Hugging Face tokenizer:

* :func:`load_tokenizer` and :func:`train_tokenizer` (a byte-level BPE trained
  on the user's corpus with the ``tokenizers`` package), offline;
* :func:`documents` reads a text file or folder, a ``datasets`` folder
  (``save_to_disk``) or jsonl/json/parquet/csv files through ``datasets``;
* :func:`write_tokens` tokenizes documents in chunks into a *token file*:
  nanoGPT's ``.bin`` (a flat uint16/uint32 array, every document followed by
  EOS) beside a ``.bytes`` file (the UTF-8 bytes each token covers, so bits
  per byte stays comparable across tokenizers) and a ``.json`` of metadata;
* :func:`lm_loaders` tokenizes once into a cache keyed by a fingerprint of the
  data and the tokenizer, then reads fixed-length windows by offset with
  short-lived ``np.memmap`` maps, so a corpus larger than memory trains with
  constant memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from comptlib.data import _text_files, check_split, window_loaders

EOS = "<|endoftext|>"
"""The separator (and only special token) of tokenizers trained by :func:`train_tokenizer`."""

_DATASET_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_FORMAT = 1  # bump when the token file layout changes: old caches are then rebuilt
_MAX_TOKEN_BYTES = 255  # what one entry of a .bytes file holds


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """A local ``tokenizer.json`` file or Hugging Face tokenizer folder, loaded without network access.

    A bare ``tokenizer.json`` does not say which token ends a document; if it
    has :data:`EOS`, that one does.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if path.is_file():
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
        if tokenizer.eos_token is None and EOS in tokenizer.get_vocab():
            tokenizer.eos_token = EOS
        return tokenizer
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer: no tokenizer.json or tokenizer folder at {path}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def train_tokenizer(
    data: str | os.PathLike[str],
    vocab_size: int,
    out: str | os.PathLike[str],
    *,
    text_column: str = "text",
    max_bytes: int | None = None,
) -> Any:
    """Train a byte-level BPE (GPT-2's scheme, :data:`EOS` as its one special token) on ``data``; save it to ``out``.

    Byte-level means every string encodes, with no unknown token. ``out``
    then loads with ``AutoTokenizer.from_pretrained(out)`` (or
    :func:`load_tokenizer`). ``data`` is anything :func:`documents` reads.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"vocab_size must be at least {len(alphabet) + 1} (256 bytes and {EOS}), got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator(documents(data, text_column=text_column, max_bytes=max_bytes), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def stdlib_bpe(vocab_size: int, *, max_bytes: int | None = None) -> Any:
    """:func:`train_tokenizer` on stdlib source, trained once per corpus and size, then loaded from the cache."""
    key = data_fingerprint("stdlib", vocab_size=vocab_size, max_bytes=max_bytes)
    folder = cache_dir().parent / "tokenizers" / f"stdlib-bpe-{vocab_size}-{key}"
    if (folder / "tokenizer.json").exists():
        return load_tokenizer(folder)
    return train_tokenizer("stdlib", vocab_size, folder, max_bytes=max_bytes)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "state.json"))


def _dataset_files(path: Path) -> list[Path] | None:
    """The jsonl/json/parquet/csv files behind ``path`` when it holds only those (one kind), else None."""
    files = [path] if path.is_file() else _text_files(path) if path.is_dir() else []
    suffixes = {p.suffix for p in files}
    if len(suffixes) == 1 and suffixes <= _DATASET_BUILDERS.keys():
        return files
    return None


def _rows(source: str | os.PathLike[str], text_column: str, split: str) -> Iterator[str] | None:
    """The ``text_column`` of a ``datasets`` source, a batch at a time; None when ``source`` is plain text."""
    path = Path(source)
    if source != "stdlib" and _is_saved_dataset(path):
        from datasets import DatasetDict, load_from_disk

        table = load_from_disk(str(path))
        if isinstance(table, DatasetDict):
            if split not in table:
                raise ValueError(f"data: {path} has splits {sorted(table)}, not {split!r}")
            table = table[split]
    elif source != "stdlib" and (files := _dataset_files(path)):
        from datasets import load_dataset

        builder = _DATASET_BUILDERS[files[0].suffix]
        table = load_dataset(builder, data_files=[str(p) for p in files], split="train")
    else:
        return None
    if text_column not in table.column_names:
        raise ValueError(f"data: {path} has columns {table.column_names}, no text column {text_column!r}")
    return (text for batch in table.iter(batch_size=1000) for text in batch[text_column])


def _files(source: str | os.PathLike[str]) -> Iterator[str]:
    """Every text file of ``source`` as one document (binary files, with a NUL byte, skipped)."""
    for path in _text_files(source):
        data = path.read_bytes()
        if b"\0" not in data:
            yield data.decode("utf-8", errors="ignore")


def documents(
    source: str | os.PathLike[str] = "stdlib",
    *,
    text_column: str = "text",
    max_bytes: int | None = None,
    split: str = "train",
) -> Iterator[str]:
    """The documents of a corpus, in a reproducible order, streamed.

    ``source`` is ``"stdlib"`` or a text file or folder (one document per
    file, as :func:`comptlib.data.load_text` reads them); a ``datasets``
    folder written by ``save_to_disk`` (its ``split`` if it has several); or
    jsonl/json/parquet/csv files, or a folder of one kind of them, read by
    ``datasets`` (one document per row). ``text_column`` names the text of a
    row. Reading stops once ``max_bytes`` UTF-8 bytes are out, the last
    document cut at a character boundary.
    """
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    rows = _rows(source, text_column, split)
    left = max_bytes
    for text in _files(source) if rows is None else rows:
        if left is not None:
            data = text.encode("utf-8")
            if len(data) >= left:
                yield data[:left].decode("utf-8", errors="ignore")
                return
            left -= len(data)
        yield text


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(source: str | os.PathLike[str], **options: Any) -> str:
    """A key that changes when any file behind ``source`` changes (path, size, mtime) or ``options`` do."""
    path = Path(source)
    files = _text_files(source) if source == "stdlib" or path.is_dir() else [path]
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return _fingerprint(_FORMAT, stats, options)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A key of a tokenizer's full definition (vocabulary, merges, normaliser, special tokens)."""
    return _fingerprint(tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id)


def _token_bytes(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """The UTF-8 bytes each token of ``text`` covers, summing to the bytes of ``text``.

    Offsets are in characters and may overlap (a character split into several
    byte tokens) or skip trimmed whitespace: each token gets the bytes up to
    its furthest end so far, and the last one whatever is left.
    """
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (code_points >= 0x80).astype(np.int64) + (code_points >= 0x800) + (code_points >= 0x10000)
    byte_at = np.concatenate([[0], np.cumsum(widths)])
    ends = byte_at[np.maximum.accumulate(np.array([end for _, end in offsets]))]
    counts = np.diff(ends, prepend=0)
    counts[-1] += byte_at[-1] - ends[-1]
    return counts


def _fit_bytes(counts: np.ndarray) -> np.ndarray:
    """``counts`` as uint8: a token covering more than 255 bytes passes the excess to the tokens after it."""
    if counts.max(initial=0) > _MAX_TOKEN_BYTES:
        counts, carry = counts.copy(), 0
        for i, n in enumerate(counts.tolist()):
            counts[i] = min(n + carry, _MAX_TOKEN_BYTES)
            carry = n + carry - counts[i]
    return counts.astype(np.uint8)


@attrs.frozen
class TokenFile:
    """A token file on disk: ``path`` (``.bin``) with its ``.bytes`` and ``.json`` beside it.

    Nothing is loaded: :meth:`tokens` and :meth:`byte_counts` map a slice of
    the file for as long as it is read.
    """

    path: Path
    dtype: str
    num_tokens: int
    num_bytes: int
    vocab_size: int
    eos_id: int

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TokenFile:
        """The token file at ``path``, as :func:`write_tokens` left it."""
        path = Path(path)
        meta = Path(f"{path}.json")
        if not meta.exists():
            raise FileNotFoundError(f"no token file at {path} (or its {meta.name}): write one with write_tokens")
        fields = json.loads(meta.read_text())
        return cls(path, **{f.name: fields[f.name] for f in attrs.fields(cls) if f.name != "path"})

    def maps(self) -> tuple[np.memmap, np.memmap]:
        """The token ids and byte counts, mapped (read-only) but not read."""
        return (
            np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,)),
            np.memmap(f"{self.path}.bytes", dtype=np.uint8, mode="r", shape=(self.num_tokens,)),
        )

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Token ids ``start:stop``, copied out of a map that is dropped right after."""
        return np.array(self.maps()[0][start:stop])

    def byte_counts(self, start: int, stop: int) -> np.ndarray:
        """The UTF-8 bytes each of the tokens ``start:stop`` covers (0 for EOS)."""
        return np.array(self.maps()[1][start:stop])


def write_tokens(
    docs: Iterable[str], tokenizer: Any, path: str | os.PathLike[str], *, chunk_docs: int = 256
) -> TokenFile:
    """Tokenize ``docs`` into a token file at ``path``, ``chunk_docs`` documents at a time, each followed by EOS.

    Memory stays at one chunk whatever the corpus size. The files appear
    only once complete (written under a temporary name, then renamed), so an
    interrupted write never leaves a cache that looks valid.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer: it has no EOS token to separate documents; set tokenizer.eos_token")
    vocab_size = len(tokenizer)
    dtype = "uint16" if vocab_size <= 2**16 else "uint32"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = {suffix: Path(f"{path}{suffix}.partial") for suffix in ("", ".bytes")}
    num_tokens = num_bytes = 0
    with open(partial[""], "wb") as ids_out, open(partial[".bytes"], "wb") as bytes_out:
        for chunk in _chunks(docs, chunk_docs):
            encoded = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
            for text, ids, offsets in zip(chunk, encoded["input_ids"], encoded["offset_mapping"]):
                counts = _fit_bytes(np.append(_token_bytes(text, offsets), 0))
                np.array([*ids, eos], dtype=dtype).tofile(ids_out)
                counts.tofile(bytes_out)
                num_tokens += len(ids) + 1
                num_bytes += int(counts.sum(dtype=np.int64))
    if num_tokens == 0:
        raise ValueError("write_tokens: the documents are empty")
    meta = {"dtype": dtype, "num_tokens": num_tokens, "num_bytes": num_bytes, "vocab_size": vocab_size, "eos_id": eos}
    partial[""].replace(path)
    partial[".bytes"].replace(f"{path}.bytes")
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return TokenFile.open(path)


def _chunks(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    """Non-empty documents in lists of ``size`` (the last one shorter)."""
    chunk: list[str] = []
    for doc in docs:
        if doc:
            chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class TokenWindows(Dataset):
    """Non-overlapping ``seq_len`` windows over tokens ``start:stop`` of a token file, read by offset on demand.

    Rows are dicts like :func:`comptlib.data.text_loaders`' batches:
    ``input_ids``, ``attention_mask`` and ``num_bytes``, the UTF-8 bytes of the
    tokens a row predicts (all but its first), which
    :func:`comptlib.families.decoder_lm.evaluate_lm` turns into bits per byte.
    With ``pad_tail`` a partial last window is right-padded and masked.
    """

    remap_every = 16
    """Windows read through one pair of maps before they are dropped. What a read faults in stays
    resident (and counted in the process's memory) while its map lives, up to a whole large folio
    (2 MB) of page cache per read on recent kernels: short-lived maps bound it at tens of MB,
    whatever the file size, for a map call every 16 windows."""

    def __init__(
        self, file: TokenFile, seq_len: int, start: int = 0, stop: int | None = None, *, pad_tail: bool = False
    ):
        self.file, self.seq_len, self.start = file, seq_len, start
        self._maps: tuple[np.memmap, np.memmap] | None = None
        self._reads = 0
        self.stop = file.num_tokens if stop is None else stop
        span = self.stop - start
        self.rows = max(span // seq_len, 0)
        if pad_tail and span - self.rows * seq_len > 1:  # a one-token tail predicts nothing
            self.rows += 1

    def __len__(self) -> int:
        return self.rows

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_maps": None}  # a worker process maps the file itself, never gets a copy

    def _read(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        if self._maps is None or self._reads == self.remap_every:
            self._maps, self._reads = self.file.maps(), 0
        self._reads += 1
        ids, counts = self._maps
        return np.array(ids[first:last]), np.array(counts[first + 1 : last])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.rows:
            raise IndexError(f"window {index} of {self.rows}")
        first = self.start + index * self.seq_len
        last = min(first + self.seq_len, self.stop)
        input_ids = torch.zeros(self.seq_len, dtype=torch.long)
        mask = torch.zeros(self.seq_len, dtype=torch.long)
        ids, counts = self._read(first, last)
        input_ids[: last - first] = torch.from_numpy(ids.astype(np.int64))
        mask[: last - first] = 1
        num_bytes = int(counts.sum(dtype=np.int64))
        return {"input_ids": input_ids, "attention_mask": mask, "num_bytes": torch.tensor(num_bytes)}


def cache_dir() -> Path:
    """Where tokenized corpora are kept: ``$COMPTLIB_CACHE/tokens``, by default ``~/.cache/comptlib/tokens``."""
    return Path(os.environ.get("COMPTLIB_CACHE", "~/.cache/comptlib")).expanduser() / "tokens"


def tokenized(
    source: str | os.PathLike[str],
    tokenizer: Any,
    *,
    text_column: str = "text",
    max_bytes: int | None = None,
    split: str = "train",
    cache: str | os.PathLike[str] | None = None,
) -> TokenFile:
    """``source`` as a token file: itself if it is one, else its documents tokenized once and cached.

    The cache entry (in ``cache``, default :func:`cache_dir`) is named by a
    fingerprint of the data files, the reading options and the tokenizer, so
    a changed corpus or tokenizer is tokenized again and an unchanged one never.
    """
    if Path(f"{source}.json").exists() and Path(f"{source}.bytes").exists():
        return TokenFile.open(source)
    options = {"text_column": text_column, "max_bytes": max_bytes, "split": split}
    key = _fingerprint(data_fingerprint(source, **options), tokenizer_fingerprint(tokenizer))
    path = Path(cache or cache_dir()) / f"{key}.bin"
    if Path(f"{path}.json").exists():
        return TokenFile.open(path)
    return write_tokens(documents(source, **options), tokenizer, path)


def lm_loaders(
    source: str | os.PathLike[str],
    tokenizer: Any = None,
    *,
    batch_size: int = 32,
    seq_len: int = 128,
    val_fraction: float = 0.1,
    val_source: str | os.PathLike[str] | None = None,
    text_column: str = "text",
    max_bytes: int | None = None,
    cache: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled training and fixed-order held-out loaders of packed windows, read from a token file.

    ``source`` is a token file (then ``tokenizer`` may be None) or anything
    :func:`documents` reads, tokenized by ``tokenizer`` through
    :func:`tokenized`'s cache. The held-out windows are ``val_source``'s
    (``split="validation"`` of a ``datasets`` folder, or other files), or else
    the last ``val_fraction`` of the token stream, which no training window
    overlaps. Models need ``vocab_size=len(tokenizer)``.
    """
    check_split(val_fraction, seq_len)
    options = {"text_column": text_column, "max_bytes": max_bytes, "cache": cache}
    file = tokenized(source, tokenizer, **options)
    if val_source is None:
        split = file.num_tokens - int(round(file.num_tokens * val_fraction))
        train = TokenWindows(file, seq_len, 0, split)
        val = TokenWindows(file, seq_len, split, pad_tail=True)
    else:
        split_name = "validation" if _is_saved_dataset(Path(val_source)) else "train"
        train = TokenWindows(file, seq_len)
        val = TokenWindows(tokenized(val_source, tokenizer, split=split_name, **options), seq_len, pad_tail=True)
    corpus = f"{file.num_tokens:,} tokens in windows of {seq_len}"
    return window_loaders(train, val, batch_size, seed, corpus, "use more data or a shorter seq_len")
