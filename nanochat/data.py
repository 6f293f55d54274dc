"""
Token streams for the trainer. Each yields (inputs, targets), both [B, T] int64 on the device.

- SyntheticStream (default): a deterministic, learnable, low-entropy stream. Each row is a Markov
  chain over the vocabulary: the next token is perm[current] with probability 1 - p_reset, else a
  fresh uniform token (and a fresh token at least every 64 positions). A model that learns the
  permutation reaches ~H(reset) + p_reset * ln(V) nats, far below ln(V), so the loss falls fast.
  Batch number n of rank r is a pure function of (seed, r, n): no state to save, and a resumed run
  sees exactly the batches the uninterrupted run would have.
- ParquetStream: upstream nanochat's layout, *.parquet shards with a `text` column, tokenized by a
  byte-level tokenizer (UTF-8 bytes are ids 0..255, BOS = 256, so vocab_size >= 257). Ranks
  take row groups round-robin. Its position is a small dict, saved with checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch

BOS_ID = 256
BYTE_VOCAB = 257


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
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.rank) * 1_000_000_007 + index) % 2**63)
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


def byte_encode(text: str) -> list[int]:
    return [BOS_ID, *text.encode("utf-8", errors="replace")]


def list_parquet_files(data_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(data_dir).expanduser().glob("*.parquet") if p.is_file())


class ParquetStream:
    """Documents from parquet shards, each [BOS] + UTF-8 bytes, packed into rows of T+1 tokens."""

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int,
        seq_len: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ):
        import pyarrow.parquet as pq  # only needed for real data

        self._pq = pq
        self.files = list_parquet_files(data_dir)
        if not self.files:
            raise FileNotFoundError(f"no *.parquet files in {data_dir}")
        self.B, self.T, self.device = batch_size, seq_len, device
        # (file index, row group) pairs of this rank, round-robin over all row groups
        groups = []
        for fi, f in enumerate(self.files):
            meta = pq.ParquetFile(f).metadata
            if "text" not in meta.schema.names:
                raise ValueError(f"{f}: no `text` column")
            groups.extend((fi, rg) for rg in range(meta.num_row_groups))
        self.groups = groups[rank::world_size]
        if not self.groups:
            raise ValueError(f"{data_dir}: fewer row groups ({len(groups)}) than ranks ({world_size})")
        # position of the next unread token: epoch, row group, document, byte offset
        self.pos = {"epoch": 0, "group": 0, "doc": 0, "offset": 0}
        self._cache: tuple[int, list[str]] | None = None

    def state_dict(self) -> dict:
        return dict(self.pos)

    def load_state_dict(self, state: dict) -> None:
        self.pos = {k: int(state[k]) for k in ("epoch", "group", "doc", "offset")}

    @property
    def epoch(self) -> int:
        return self.pos["epoch"]

    def _docs(self, group: int) -> list[str]:
        if self._cache is None or self._cache[0] != group:
            fi, rg = self.groups[group]
            table = self._pq.ParquetFile(self.files[fi]).read_row_group(rg, columns=["text"])
            self._cache = (group, [t if t is not None else "" for t in table.column("text").to_pylist()])
        return self._cache[1]

    def _take(self, n: int) -> list[int]:
        out: list[int] = []
        p = self.pos
        empty_groups = 0
        while len(out) < n:
            docs = self._docs(p["group"])
            if not docs:
                empty_groups += 1
                if empty_groups > len(self.groups):
                    raise ValueError("no documents in any row group of this rank")
            if p["doc"] >= len(docs):
                p["doc"], p["offset"] = 0, 0
                p["group"] += 1
                if p["group"] >= len(self.groups):
                    p["group"] = 0
                    p["epoch"] += 1
                continue
            toks = byte_encode(docs[p["doc"]])
            chunk = toks[p["offset"] : p["offset"] + n - len(out)]
            out.extend(chunk)
            p["offset"] += len(chunk)
            if p["offset"] >= len(toks):
                p["doc"] += 1
                p["offset"] = 0
        return out

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.tensor(self._take(self.B * (self.T + 1)), dtype=torch.long).view(self.B, self.T + 1)
        if self.device.type == "cuda":
            tokens = tokens.pin_memory().to(self.device, non_blocking=True)
        else:
            tokens = tokens.to(self.device)
        return tokens[:, :-1], tokens[:, 1:]

    def __iter__(self):
        return self
