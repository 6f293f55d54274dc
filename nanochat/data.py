"""
Token streams for the trainer. Each yields (inputs, targets), both [B, T] int64 on the device.

- SyntheticStream (`--data synthetic`, the default): a deterministic, learnable, low-entropy
  stream. Each row is a Markov chain over the vocabulary: the next token is perm[current] with
  probability 1 - p_reset, else a fresh uniform token (and a fresh token at least every 64
  positions). A model that learns the permutation reaches ~H(reset) + p_reset * ln(V) nats, far
  below ln(V), so the loss falls fast. Batch number n of rank r is a pure function of
  (seed, r, n): no state to save, and a resumed run sees exactly the batches the uninterrupted
  run would have. Needs nothing but torch.
- BestFitLoader (`--data parquet`): upstream nanochat's data. A data dir holds parquet shards
  (`shard_00000.parquet`, ...) with a `text` column, one document per row; the last shard is the
  validation split, the others the training split. Each rank reads its own row groups. Documents
  are tokenized with <|bos|> in front and packed into rows of T+1 tokens by best fit (below), so
  every row starts at a document's start. Its position (a cursor and the documents waiting in its
  buffer) is saved with checkpoints, and a resumed run gets exactly the rows it would have had.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import torch

DEFAULT_DATA_DIR = "~/.cache/nanochat/base_data"
HOW_TO_MAKE = (
    "make one: python -m nanochat.smoke_data --out DIR (a small corpus in DIR/base_data), "
    "or download upstream nanochat's shards (its `python -m nanochat.dataset -n 170`)"
)


class SyntheticStream:
    max_run = 64  # a fresh token at least this often keeps the power table small

    def __init__(
        self,
        vocab_size: int,
        batch_size: int,
        seq_len: int,
        device: torch.device,
        seed: int = 0,
        rank: int = 0,
        p_reset: float = 0.15,
    ):
        self.V, self.B, self.T = vocab_size, batch_size, seq_len
        self.device, self.seed, self.rank, self.p_reset = device, seed, rank, p_reset
        self.batch_index = 0
        g = torch.Generator().manual_seed(seed)  # the same chain rule on every rank
        perm = torch.randperm(vocab_size, generator=g)
        # powers[j][v] = perm applied j times to v
        powers = torch.empty(self.max_run, vocab_size, dtype=torch.long)
        powers[0] = torch.arange(vocab_size)
        for j in range(1, self.max_run):
            powers[j] = perm[powers[j - 1]]
        self.powers = powers.view(-1)

    def state_dict(self) -> dict:
        return {"batch_index": self.batch_index, "epoch": 0}

    def load_state_dict(self, state: dict) -> None:
        self.batch_index = int(state["batch_index"])

    @property
    def epoch(self) -> int:
        return 0  # an endless stream has no epochs

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, T1 = self.B, self.T + 1
        g = torch.Generator().manual_seed(
            ((self.seed * 1_000_003 + self.rank) * 1_000_000_007 + index) % 2**63
        )
        fresh = torch.randint(0, self.V, (B, T1), generator=g)
        reset = torch.rand(B, T1, generator=g) < self.p_reset
        pos = torch.arange(T1).expand(B, T1)
        reset |= pos % self.max_run == 0
        # index of the latest reset at or before each position, and the distance to it
        last = torch.where(reset, pos, torch.zeros_like(pos)).cummax(dim=1).values
        run = pos - last
        start = fresh.gather(1, last)
        tokens = self.powers[run * self.V + start]
        if self.device.type == "cuda":
            tokens = tokens.pin_memory().to(self.device, non_blocking=True)
        else:
            tokens = tokens.to(self.device)
        return tokens[:, :-1], tokens[:, 1:]

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.batch_index)
        self.batch_index += 1
        return out

    def __iter__(self):
        return self


def to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU -> device; through pinned memory on CUDA, so the copy overlaps the running step."""
    if device.type == "cuda":
        return rows.pin_memory().to(device, non_blocking=True)
    return rows.to(device)


# ---------------------------------------------------------------------------------------------
# parquet shards


class DataDirError(Exception):
    """A data dir that is missing or unusable; the message is one line that says what to do."""


def list_parquet_files(data_dir: str | Path) -> list[Path]:
    """The shards, in name order (upstream's `shard_NNNNN.parquet` sort by index)."""
    return sorted(p for p in Path(data_dir).expanduser().glob("*.parquet") if p.is_file())


def split_files(data_dir: str | Path, split: str) -> list[Path]:
    """The shards of a split: all but the last for "train", the last one for "val"."""
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise DataDirError(f"--data-dir {data_dir}: no such directory; {HOW_TO_MAKE}")
    files = list_parquet_files(d)
    if len(files) < 2:
        raise DataDirError(
            f"--data-dir {data_dir}: {len(files)} *.parquet shard(s); at least 2 are needed "
            f"(the last one is the validation split); {HOW_TO_MAKE}"
        )
    return files[:-1] if split == "train" else files[-1:]


def _is_text(kind) -> bool:
    """Is an arrow type a string column (string, large_string, string_view)?"""
    import pyarrow as pa

    checks = (pa.types.is_string, pa.types.is_large_string, getattr(pa.types, "is_string_view", None))
    return any(check is not None and check(kind) for check in checks)


class DocumentStream:
    """One rank's documents of a split, in a fixed order, endlessly (epoch 1, 2, ...).

    The order: shard by shard; in each shard the row groups rank, rank + W, rank + 2W, ...
    (W = world size), as upstream; in each row group its rows. A document's id is
    (unit, row), unit = index into this rank's list of (shard, row group)."""

    def __init__(self, files: list[Path], rank: int = 0, world_size: int = 1):
        import pyarrow.parquet as pq  # only the parquet path needs pyarrow

        self._pq = pq
        self.files = files
        self.units: list[tuple[int, int]] = []  # (file index, row group)
        rows = 0
        for fi, f in enumerate(files):
            try:
                meta = pq.ParquetFile(f).metadata
            except Exception as e:  # not parquet, truncated, unreadable
                raise DataDirError(f"{f}: not a readable parquet file ({type(e).__name__}: {e})") from None
            if "text" not in meta.schema.names:
                raise DataDirError(f"{f}: no `text` column (columns: {', '.join(meta.schema.names)})")
            kind = meta.schema.to_arrow_schema().field("text").type
            if not _is_text(kind):
                raise DataDirError(f"{f}: its `text` column holds {kind}, not strings")
            for rg in range(rank, meta.num_row_groups, world_size):
                self.units.append((fi, rg))
                rows += meta.row_group(rg).num_rows
        if rows == 0:
            names = ", ".join(f.name for f in files)
            raise DataDirError(
                f"rank {rank} of {world_size} gets no documents from {names}: write more row groups "
                f"per shard than there are ranks"
            )
        self.epoch, self.unit, self.row = 1, 0, 0  # the cursor: the next document to read
        self._cached: tuple[int, list[str]] | None = None

    def texts(self, unit: int) -> list[str]:
        """All documents of one row group (the last one read is kept)."""
        if self._cached is None or self._cached[0] != unit:
            fi, rg = self.units[unit]
            try:  # a shard can be damaged past its footer (a corrupt page): found only here
                column = (
                    self._pq.ParquetFile(self.files[fi]).read_row_group(rg, columns=["text"]).column("text")
                )
                texts = [t if t is not None else "" for t in column.to_pylist()]
            except Exception as e:  # pyarrow's errors: OSError, ArrowInvalid, ...
                why = " ".join(str(e).split())[:200]
                raise DataDirError(
                    f"{self.files[fi]}: row group {rg} unreadable ({type(e).__name__}: {why})"
                ) from None
            if not all(isinstance(t, str) for t in texts):
                bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
                raise DataDirError(
                    f"{self.files[fi]}: row group {rg} of the `text` column holds a {bad}, not a string"
                )
            self._cached = (unit, texts)
        return self._cached[1]

    def read(self, n: int) -> list[tuple[tuple[int, int], str]]:
        """Up to n (id, text) pairs from the cursor on, within one row group; moves the cursor."""
        while True:
            docs = self.texts(self.unit)
            if self.row < len(docs):
                out = [((self.unit, r), docs[r]) for r in range(self.row, min(self.row + n, len(docs)))]
                self.row += len(out)
                return out
            self.unit, self.row = self.unit + 1, 0
            if self.unit == len(self.units):
                self.unit, self.epoch = 0, self.epoch + 1


class BestFitLoader:
    """Rows of T+1 tokens packed from whole documents, each row starting with <|bos|>.

    Best fit, as upstream nanochat: tokenized documents wait in a buffer (refilled to
    `buffer_size`); a row is filled by taking the longest waiting document that still fits, again
    and again; when none fits, the shortest one is cut to fill the row exactly and its tail is
    dropped. No padding, and no token sees across a row boundary into a document it never saw
    the start of. Ties go to the document that has waited longest.

    The buffer is kept sorted by (length, arrival), so each pick is a binary search."""

    def __init__(
        self,
        tokenizer,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        seq_len: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        buffer_size: int = 1000,
        read_size: int = 128,
        threads: int = 4,
    ):
        self.tokenizer, self.B, self.T, self.device = tokenizer, batch_size, seq_len, device
        self.docs = DocumentStream(split_files(data_dir, split), rank, world_size)
        self.buffer_size, self.read_size, self.threads = buffer_size, read_size, threads
        self._keys: list[tuple[int, int]] = []  # sorted (length, arrival number)
        self._waiting: dict[int, tuple[tuple[int, int], list[int]]] = {}  # arrival -> (doc id, tokens)
        self._arrivals = 0

    @property
    def epoch(self) -> int:
        return self.docs.epoch

    def _add(self, ids: list[tuple[int, int]], texts: list[str]) -> None:
        for doc_id, tokens in zip(
            ids, self.tokenizer.encode_batch(texts, prepend_bos=True, threads=self.threads), strict=True
        ):
            bisect.insort(self._keys, (len(tokens), self._arrivals))
            self._waiting[self._arrivals] = (doc_id, tokens)
            self._arrivals += 1

    def _refill(self) -> None:
        while len(self._keys) < self.buffer_size:
            got = self.docs.read(self.read_size)
            self._add([i for i, _ in got], [t for _, t in got])

    def _take(self, room: int) -> list[int]:
        """The tokens that go next into a row with `room` free slots."""
        i = bisect.bisect_right(self._keys, (room, float("inf")))
        if i > 0:  # the longest that fits, the earliest of that length
            length = self._keys[i - 1][0]
            key = self._keys.pop(bisect.bisect_left(self._keys, (length, -1)))
        else:  # nothing fits: cut the shortest
            key = self._keys.pop(0)
        return self._waiting.pop(key[1])[1][:room]

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np  # fills rows from token lists fast; only the parquet path needs it

        width = self.T + 1
        rows = np.empty((self.B, width), dtype=np.int64)
        for b in range(self.B):
            pos = 0
            while pos < width:
                self._refill()
                tokens = self._take(width - pos)
                rows[b, pos : pos + len(tokens)] = tokens
                pos += len(tokens)
        tokens = to_device(torch.from_numpy(rows), self.device)
        return tokens[:, :-1], tokens[:, 1:]

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        """The cursor and the ids of the waiting documents, in arrival order (JSON-able)."""
        return {
            "epoch": self.docs.epoch,
            "unit": self.docs.unit,
            "row": self.docs.row,
            "waiting": [list(doc_id) for doc_id, _ in self._waiting.values()],
        }

    def load_state_dict(self, state: dict) -> None:
        """Read the waiting documents again and put them back in the same order."""
        self._keys, self._waiting, self._arrivals = [], {}, 0
        waiting = [(int(unit), int(row)) for unit, row in state["waiting"]]
        texts = []
        for unit, row in waiting:  # arrival order is stream order: mostly one read per row group
            docs = self.docs.texts(unit) if 0 <= unit < len(self.docs.units) else []
            if not 0 <= row < len(docs):
                raise DataDirError(
                    f"the checkpoint's data position (row group {unit}, row {row}) is not in this data dir"
                )
            texts.append(docs[row])
        self._add(waiting, texts)
        self.docs.epoch, self.docs.unit, self.docs.row = (
            int(state["epoch"]),
            int(state["unit"]),
            int(state["row"]),
        )
