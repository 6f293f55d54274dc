"""Data: synthetic stream; parquet shards -> best-fit rows (against upstream's algorithm), rank
slices, exact resume, and the one-line errors for a data dir that is not there."""

import json

import pytest
import torch

from nanochat.data import BestFitLoader, DataDirError, DocumentStream, SyntheticStream, split_files

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
CPU = torch.device("cpu")


class CharTokenizer:
    """One token per character (ord), BOS = 0: rows are easy to read back into text."""

    bos_id = 0

    def encode_batch(self, texts, prepend_bos=False, threads=1):
        return [([0] if prepend_bos else []) + [ord(c) for c in t] for t in texts]


def write_shards(d, docs_per_shard, n_shards=3, row_group_size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for s in range(n_shards):
        texts = []
        for i in range(docs_per_shard):
            n = int(torch.randint(1, 40, (1,), generator=g))
            texts.append(f"{s}.{i}:" + "x" * n)
        pq.write_table(pa.table({"text": texts}), d / f"shard_{s:05d}.parquet", row_group_size=row_group_size)
        docs.append(texts)
    return docs


def upstream_rows(stream_docs, B, T, n_batches, buffer_size, read_size):
    """Upstream nanochat's best fit, written plainly: a list buffer scanned front to back."""
    it = iter(stream_docs)
    buffer, out = [], []
    pending = []

    def refill():
        nonlocal pending
        while len(buffer) < buffer_size:
            if not pending:
                pending = next(it)  # one row group's documents
            chunk, pending = pending[:read_size], pending[read_size:]
            buffer.extend([0] + [ord(c) for c in t] for t in chunk)

    for _ in range(n_batches):
        rows = []
        for _ in range(B):
            row = []
            while len(row) < T + 1:
                refill()
                room = T + 1 - len(row)
                best = -1
                for i, doc in enumerate(buffer):
                    if len(doc) <= room and (best < 0 or len(doc) > len(buffer[best])):
                        best = i
                if best >= 0:
                    row += buffer.pop(best)
                else:
                    shortest = min(range(len(buffer)), key=lambda i: len(buffer[i]))
                    row += buffer.pop(shortest)[:room]
            rows.append(row)
        out.append(rows)
    return out


def row_groups_of_rank(shards, rank, world, row_group_size, epochs=40):
    for _ in range(epochs):
        for texts in shards:
            groups = [texts[i : i + row_group_size] for i in range(0, len(texts), row_group_size)]
            yield from groups[rank::world]


@pytest.mark.parametrize("rank,world,buffer_size,read_size", [(0, 1, 7, 3), (1, 2, 20, 4), (0, 1, 1000, 128)])
def test_best_fit_rows_match_upstreams_algorithm(tmp_path, rank, world, buffer_size, read_size):
    shards = write_shards(tmp_path, docs_per_shard=40)
    B, T = 3, 24
    loader = BestFitLoader(CharTokenizer(), tmp_path, "train", B, T, CPU, rank, world, buffer_size, read_size)
    got = [next(loader) for _ in range(12)]
    want = upstream_rows(row_groups_of_rank(shards[:-1], rank, world, 5), B, T, 12, buffer_size, read_size)
    for (x, y), rows in zip(got, want, strict=True):
        rows = torch.tensor(rows)
        assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:])
        assert (x[:, 0] == 0).all()  # every row starts at a document's start
    assert loader.epoch >= 1


def test_ranks_read_disjoint_row_groups_and_the_last_shard_is_validation(tmp_path):
    shards = write_shards(tmp_path, docs_per_shard=20)
    files = split_files(tmp_path, "train")
    assert [f.name for f in files] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert [f.name for f in split_files(tmp_path, "val")] == ["shard_00002.parquet"]
    seen = []
    for rank in range(2):
        docs = DocumentStream(files, rank, 2)
        seen.append({text for u in range(len(docs.units)) for text in docs.texts(u)})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(shards[0] + shards[1])
    val = DocumentStream(split_files(tmp_path, "val"))
    assert {t for u in range(len(val.units)) for t in val.texts(u)} == set(shards[2])


def test_resume_from_state_gives_exactly_the_same_rows(tmp_path):
    write_shards(tmp_path, docs_per_shard=30)
    make = lambda: BestFitLoader(CharTokenizer(), tmp_path, "train", 2, 16, CPU, buffer_size=12, read_size=5)
    a = make()
    for _ in range(7):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # it travels in the checkpoint's JSON
    assert len(state["waiting"]) >= 12
    after = [next(a)[0] for _ in range(60)]  # past the end of an epoch
    assert a.epoch >= 2
    b = make()
    b.load_state_dict(state)
    again = [next(b)[0] for _ in range(60)]
    assert all(torch.equal(p, q) for p, q in zip(after, again, strict=True))


def test_data_dir_errors_are_one_line_saying_how_to_make_it(tmp_path):
    with pytest.raises(DataDirError, match=r"no such directory; make one: python -m nanochat.smoke_data"):
        split_files(tmp_path / "missing", "train")
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "shard_00000.parquet")
    with pytest.raises(DataDirError, match=r"1 \*\.parquet shard\(s\); at least 2"):
        split_files(tmp_path, "train")
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "shard_00001.parquet")
    with pytest.raises(DataDirError, match="no `text` column"):
        DocumentStream(split_files(tmp_path, "val"))
    with pytest.raises(DataDirError, match="rank 1 of 2 gets no documents"):
        DocumentStream(split_files(tmp_path, "train"), rank=1, world_size=2)  # one row group, two ranks
    (tmp_path / "shard_00002.parquet").write_bytes(b"garbage")
    with pytest.raises(DataDirError, match="not a readable parquet file"):
        DocumentStream(split_files(tmp_path, "val"))


@pytest.mark.slow
def test_real_tokenizer_rows_decode_to_documents(smoke_corpus):
    from nanochat.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(smoke_corpus / "tokenizer")
    loader = BestFitLoader(tok, smoke_corpus / "base_data", "val", 4, 128, CPU, rank=1, world_size=2)
    x, y = next(loader)
    assert x.shape == y.shape == (4, 128) and (x[:, 0] == tok.bos_id).all()
    text = tok.decode(x[0].tolist())
    assert text.startswith("<|bos|>") and len(text) > 200  # ~3-4 characters per token


def test_synthetic_stream_is_deterministic_per_rank_and_learnable():
    a = SyntheticStream(512, 4, 64, CPU, seed=7, rank=0)
    b = SyntheticStream(512, 4, 64, CPU, seed=7, rank=0)
    other = SyntheticStream(512, 4, 64, CPU, seed=7, rank=1)
    x0, y0 = next(a)
    x1, _ = next(b)
    assert torch.equal(x0, x1)
    assert not torch.equal(x0, next(other)[0])
    assert torch.equal(x0[:, 1:], y0[:, :-1])
    assert torch.equal(a.batch(5)[0], b.batch(5)[0])
    # most transitions follow the fixed permutation: low entropy, so the loss can fall
    x, y = a.batch(3)
    perm = a.powers.view(a.max_run, 512)[1]
    follows = (perm[x] == y).float().mean()
    assert follows > 0.7
    assert int(x.max()) < 512 and int(x.min()) >= 0
