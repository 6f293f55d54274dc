"""The trainer's bad input and faults, each one line naming the file (exit 2 where it rejects its
input, 1 where a save failed), no traceback and no temporary file left: a corrupt parquet page, a
`text` column that holds no strings, a truncated checkpoint or meta file, a full disk at save."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import mount_tmpfs

from nanochat import checkpoint
from nanochat.checkpoint import CheckpointError
from nanochat.data import DataDirError, DocumentStream

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--device-type",
    "cpu",
    "--depth",
    "2",
    "--max-seq-len",
    "64",
    "--device-batch-size",
    "2",
    "--total-batch-size",
    "128",
    "--compile-mode",
    "none",
]


def trainer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "nanochat.base_train", *TINY, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1 and "Traceback" not in r.stderr, (
        r.returncode,
        r.stderr[-2000:],
    )
    assert lines[0].startswith("base_train: error: ")
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def data_dir(tmp_path: Path, table) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for i in range(2):
        pq.write_table(table, d / f"shard_{i:05d}.parquet", row_group_size=50, compression="none")
    return d


def corrupt_first_page(shard: Path) -> None:
    """The first page header overwritten (just after the magic): the footer still reads."""
    raw = bytearray(shard.read_bytes())
    raw[4:40] = b"\xff" * 36
    shard.write_bytes(bytes(raw))


def test_a_corrupt_page_and_a_column_of_numbers_are_one_line_naming_the_shard(tmp_path):
    """A corrupt page passes the first look at a shard (its footer) and is found at the first read
    of its row group; a `text` column of int64 is found at once."""
    d = data_dir(tmp_path, pa.table({"text": [f"document {i} " * 20 for i in range(200)]}))
    shard = d / "shard_00000.parquet"
    corrupt_first_page(shard)
    stream = DocumentStream([shard])
    with pytest.raises(DataDirError) as e:
        stream.read(4)
    assert str(e.value).startswith(f"{shard}: row group 0 unreadable (OSError: ") and "\n" not in str(e.value)
    shutil.rmtree(d)
    d = data_dir(tmp_path, pa.table({"text": list(range(200))}))
    with pytest.raises(
        DataDirError, match=r"shard_00000\.parquet: its `text` column holds int64, not strings$"
    ):
        DocumentStream([d / "shard_00000.parquet"])


@pytest.mark.slow
def test_the_trainer_says_a_corrupt_page_in_one_line(tmp_path, smoke_corpus):
    """Through the trainer (~10 s): the model is built, the first batch meets the page, exit 2."""
    d = data_dir(tmp_path, pa.table({"text": [f"document {i} " * 20 for i in range(200)]}))
    corrupt_first_page(d / "shard_00000.parquet")
    r = trainer(
        "--data",
        "parquet",
        "--data-dir",
        str(d),
        "--tokenizer-dir",
        str(smoke_corpus / "tokenizer"),
        "--num-iterations",
        "2",
    )
    one_line(r, 2, f"{d / 'shard_00000.parquet'}: row group 0 unreadable (OSError: ")


def fake_checkpoint(root: Path, step: int = 2) -> dict[str, Path]:
    paths = checkpoint.checkpoint_paths(root / "t", step)
    paths["model"].parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(3)}, paths["model"])
    torch.save({"state": {}}, paths["optim"])
    paths["meta"].write_text(json.dumps({"step": step}))
    return paths


def test_a_truncated_checkpoint_or_meta_file_is_one_line_naming_it(tmp_path):
    paths = fake_checkpoint(tmp_path)
    model, optim, meta = checkpoint.load_checkpoint(tmp_path / "t", 2, torch.device("cpu"))
    assert meta == {"step": 2} and torch.equal(model["w"], torch.zeros(3))
    for key, words in (
        ("model", "not a readable checkpoint"),
        ("optim", "not a readable checkpoint"),
        ("meta", "not a readable checkpoint meta file"),
    ):
        paths = fake_checkpoint(tmp_path / key)
        data = paths[key].read_bytes()
        paths[key].write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError) as e:
            checkpoint.load_checkpoint(tmp_path / key / "t", 2, torch.device("cpu"))
        assert str(e.value).startswith(f"{paths[key]}: {words} (") and "\n" not in str(e.value)
        assert e.value.exit_code == 2


@pytest.mark.slow
def test_the_trainer_says_a_truncated_checkpoint_in_one_line(tmp_path):
    """Through the trainer (~4 s): the model is built, then the checkpoint it resumes from is not one."""
    paths = checkpoint.checkpoint_paths(tmp_path / "ck" / "t", 1)
    paths["model"].parent.mkdir(parents=True)
    for p in paths.values():
        p.write_bytes(b"PK\x03\x04 cut short")
    r = trainer(
        "--vocab-size",
        "256",
        "--num-iterations",
        "4",
        "--checkpoint-root",
        str(tmp_path / "ck"),
        "--model-tag",
        "t",
        "--resume-from-step",
        "1",
    )
    one_line(r, 2, f"{paths['model']}: not a readable checkpoint (")


def test_a_failed_save_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """torch.save wraps a failed write in a RuntimeError after writing part of the file; the meta
    file's write fails with the OSError itself. Either way: one line, and no .tmp left."""

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598\n"
            ) from None

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError) as e:
        checkpoint.save_checkpoint(tmp_path / "t", 3, {"w": 1}, {"s": 1}, {"step": 3})
    assert (
        str(e.value)
        == (
            f"cannot save checkpoint file {tmp_path}/t/model_000003.pt: "
            "OSError: [Errno 28] No space left on device"
        )
        and e.value.exit_code == 1
    )
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == []
    monkeypatch.undo()
    real_write = Path.write_text

    def no_space(self, *a, **kw):
        real_write(self, "{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(
        CheckpointError, match=r"meta_000003\.json: OSError: \[Errno 28\] No space left on device"
    ):
        checkpoint.save_checkpoint(tmp_path / "t", 3, {"w": 1}, {"s": 1}, {"step": 3})
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["model_000003.pt", "optim_000003_rank0.pt"]


@pytest.mark.slow
def test_a_full_disk_at_save_ends_the_trainer_with_one_line(tmp_path):
    """A real full filesystem (a 1 MB tmpfs; root only): the trainer's first save fails, exit 1,
    one line naming the file, no temporary file on the disk."""
    fs = tmp_path / "fs"
    if not mount_tmpfs(fs, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        r = trainer(
            "--vocab-size",
            "256",
            "--num-iterations",
            "3",
            "--save-every",
            "2",
            "--checkpoint-root",
            str(fs),
            "--model-tag",
            "t",
        )
        one_line(r, 1, f"cannot save checkpoint file {fs}/t/", "No space left on device")
        assert not [p for p in (fs / "t").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)
