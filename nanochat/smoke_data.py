"""
A small real-text corpus and tokenizer, made offline in seconds, for smoke runs of the real recipe:

    python -m nanochat.smoke_data --out ~/.cache/nanochat/smoke

writes, in upstream nanochat's layouts (so `--data parquet` reads them like the real thing):

    DIR/base_data/shard_00000.parquet ... shard_00004.parquet   `text` column; the last is validation
    DIR/tokenizer/tokenizer.pkl, token_bytes.pt                  BPE trained on the training shards

The text is English prose from this Python's standard library: the docstrings of its public
modules, classes and functions, one document each ("json.dumps" + its docstring), read from the
source files with `ast` (nothing is imported or run). Files in name order until --chars
characters, shuffled with a fixed seed, cut into shards: the same Python gives the same bytes.
Each shard has 8 row groups, so up to 8 ranks each read their own. A part that already exists
(DIR/base_data or DIR/tokenizer) is kept as it is; new parts appear whole (written beside, then
renamed).
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import random
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

PROG = "smoke_data"
N_SHARDS = 5  # 4 training shards + 1 validation shard
ROW_GROUPS = 8  # per shard: the most ranks that can each read their own part of a shard
SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "turtledemo",
    "ensurepip",
}


def stdlib_files() -> list[Path]:
    """Public modules of the standard library, in path order (no tests, no private modules)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(("_", ".")) for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("_") and rel.name != "__init__.py":
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def docstrings(path: Path, module: str) -> list[str]:
    """One document per documented module, class and function: its dotted name, then its docstring."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):  # a file for another Python version, or not UTF-8
        return []
    out = []

    def visit(node: ast.AST, name: str) -> None:
        doc = ast.get_docstring(node)
        if doc and len(doc) >= 40:  # a one-liner like "Return x." teaches little
            out.append(f"{name}\n\n{doc}")
        for child in getattr(node, "body", []):
            if isinstance(
                child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ) and not child.name.startswith("_"):
                visit(child, f"{name}.{child.name}")

    visit(tree, module)
    return out


def collect(max_chars: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in stdlib_files():
        rel = path.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        for doc in docstrings(path, ".".join(parts)):
            docs.append(doc)
            total += len(doc)
        if total >= max_chars:
            break
    random.Random(0).shuffle(docs)
    return docs


def write_shards(docs: list[str], out_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    per_shard = math.ceil(len(docs) / N_SHARDS)
    for i in range(N_SHARDS):
        shard = docs[i * per_shard : (i + 1) * per_shard]
        pq.write_table(pa.table({"text": shard}), out_dir / f"shard_{i:05d}.parquet",
                       row_group_size=math.ceil(len(shard) / ROW_GROUPS))  # fmt: skip


def publish(make, final: Path) -> None:
    """Run make(tmp_dir) in a fresh dir beside `final`, then rename it to `final`."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary dir
    try:
        make(tmp)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Write a small real-text corpus and tokenizer.")
    p.add_argument("--out", required=True, help="DIR: DIR/base_data and DIR/tokenizer are made")
    p.add_argument("--chars", type=int, default=1_200_000, help="characters of text, about")
    p.add_argument(
        "--vocab-size", type=int, default=1024, help="tokenizer vocab, the 9 special tokens included"
    )
    args = p.parse_args(argv)
    if not 265 <= args.vocab_size <= 65536:
        print(f"{PROG}: error: --vocab-size must be in 265..65536 (got {args.vocab_size})", file=sys.stderr)
        return 2
    try:
        import pyarrow  # noqa: F401
        import rustbpe  # noqa: F401
        import tiktoken  # noqa: F401
    except ImportError as e:
        print(f"{PROG}: error: {e.name} is not installed: pip install -e '.[train]'", file=sys.stderr)
        return 2
    from nanochat.tok_train import train_and_save

    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    data_dir, tok_dir = out / "base_data", out / "tokenizer"
    t0 = time.time()
    if data_dir.exists():
        print(f"{data_dir}: exists, kept")
    else:
        docs = collect(args.chars)
        publish(lambda d: write_shards(docs, d), data_dir)
        n_chars = sum(map(len, docs))
        print(f"{data_dir}: {N_SHARDS} shards ({N_SHARDS - 1} train + 1 validation), {len(docs):,} documents, "
              f"{n_chars:,} characters of Python {sys.version.split()[0]} standard library docstrings")  # fmt: skip
    if tok_dir.exists():
        print(f"{tok_dir}: exists, kept")
    else:
        publish(lambda d: train_and_save(data_dir, d, args.vocab_size, max_chars=10**9), tok_dir)
        print(f"{tok_dir}: BPE tokenizer, vocab {args.vocab_size:,}")
    print(
        f"done in {time.time() - t0:.1f}s; train with: --data parquet --data-dir {data_dir} --tokenizer-dir {tok_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
