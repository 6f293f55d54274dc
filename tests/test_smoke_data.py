"""The smoke corpus: real English in upstream's layouts, made offline, the same bytes every time."""

import pytest

from nanochat import smoke_data
from nanochat.data import DocumentStream, split_files

pq = pytest.importorskip("pyarrow.parquet")


@pytest.mark.slow
def test_smoke_corpus_layout_content_and_determinism(smoke_corpus, tmp_path, capsys):
    shards = sorted((smoke_corpus / "base_data").glob("*.parquet"))
    assert [s.name for s in shards] == [f"shard_{i:05d}.parquet" for i in range(5)]
    for s in shards:
        meta = pq.ParquetFile(s).metadata
        assert meta.schema.names == ["text"] and meta.num_row_groups == 8
    assert {p.name for p in (smoke_corpus / "tokenizer").iterdir()} == {"tokenizer.pkl", "token_bytes.pt"}
    val = DocumentStream(split_files(smoke_corpus / "base_data", "val"))
    docs = [t for u in range(len(val.units)) for t in val.texts(u)]
    text = "\n".join(docs)
    assert 150_000 < len(text) < 400_000 and len(docs) > 500
    assert " the " in text and "Return" in text and "\x00" not in text
    # made again elsewhere: the same bytes; made again in place: nothing is touched
    assert smoke_data.main(["--out", str(tmp_path)]) == 0
    for rel in (
        "base_data/shard_00000.parquet",
        "base_data/shard_00004.parquet",
        "tokenizer/tokenizer.pkl",
        "tokenizer/token_bytes.pt",
    ):
        assert (tmp_path / rel).read_bytes() == (smoke_corpus / rel).read_bytes(), rel
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    capsys.readouterr()
    assert smoke_data.main(["--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("exists, kept") == 2
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
