"""Fixtures shared by several test files."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_corpus(tmp_path_factory) -> Path:
    """The smoke corpus and its tokenizer, made once per session (a few seconds):
    <dir>/base_data/shard_0000{0..4}.parquet and <dir>/tokenizer/ (vocab 1024)."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("rustbpe")
    pytest.importorskip("tiktoken")
    from nanochat import smoke_data

    out = tmp_path_factory.mktemp("smoke")
    assert smoke_data.main(["--out", str(out)]) == 0
    return out
