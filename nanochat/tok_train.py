"""
Train the BPE tokenizer on the training shards and save it in upstream nanochat's layout:

    python -m nanochat.tok_train --data-dir ~/.cache/nanochat/base_data \
        --tokenizer-dir ~/.cache/nanochat/tokenizer --vocab-size 32768

Reads the `text` column of every shard but the last (the validation split), each document cut
to --doc-cap characters, until --max-chars characters; trains with rustbpe; writes
tokenizer.pkl and token_bytes.pt (nanochat/tokenizer.py). A dir that already holds a tokenizer
is left alone: choose another one or remove it first.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from nanochat.data import DEFAULT_DATA_DIR, DataDirError, DocumentStream, split_files
from nanochat.tokenizer import DEFAULT_TOKENIZER_DIR, Tokenizer

PROG = "tok_train"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints the usage block too)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        sys.exit(2)


def training_texts(data_dir: str | Path) -> Iterator[str]:
    """Every document of the training split, once, in the shards' order."""
    docs = DocumentStream(split_files(data_dir, "train"))
    for unit in range(len(docs.units)):
        yield from docs.texts(unit)


def capped(texts: Iterable[str], max_chars: int, doc_cap: int) -> Iterator[str]:
    """Documents cut to doc_cap characters each, until max_chars characters in all."""
    total = 0
    for text in texts:
        text = text[:doc_cap]
        yield text
        total += len(text)
        if total >= max_chars:
            return


def train_and_save(data_dir: str | Path, tokenizer_dir: str | Path, vocab_size: int, max_chars: int,
                   doc_cap: int = 10_000) -> Tokenizer:  # fmt: skip
    tok = Tokenizer.train(capped(training_texts(data_dir), max_chars, doc_cap), vocab_size)
    tok.save(tokenizer_dir)
    return tok


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog=PROG, description="Train a BPE tokenizer (rustbpe) on the training shards.")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="parquet shards with a `text` column")
    p.add_argument(
        "--tokenizer-dir", default=DEFAULT_TOKENIZER_DIR, help="where tokenizer.pkl + token_bytes.pt go"
    )
    p.add_argument("--vocab-size", type=int, default=32768, help="including the 9 special tokens")
    p.add_argument("--max-chars", type=int, default=2_000_000_000, help="characters to train on, at most")
    p.add_argument("--doc-cap", type=int, default=10_000, help="characters per document, at most")
    args = p.parse_args(argv)
    if args.vocab_size < 265:
        p.error(f"--vocab-size must be >= 265 (256 bytes + 9 special tokens) (got {args.vocab_size})")
    if args.max_chars < 1 or args.doc_cap < 1:
        p.error("--max-chars and --doc-cap must be >= 1")
    out = Path(args.tokenizer_dir).expanduser()
    if (out / "tokenizer.pkl").exists():
        p.error(
            f"--tokenizer-dir {args.tokenizer_dir} already holds a tokenizer.pkl: choose another dir or remove it"
        )
    try:
        import rustbpe  # noqa: F401
        import tiktoken  # noqa: F401
    except ImportError as e:
        p.error(f"{e.name} is not installed: pip install -e '.[train]'")
    t0 = time.time()
    try:
        tok = train_and_save(args.data_dir, out, args.vocab_size, args.max_chars, args.doc_cap)
    except DataDirError as e:
        p.error(str(e))
    n_bytes = int(tok.token_bytes.sum())
    print(f"Trained a {tok.vocab_size:,}-token BPE tokenizer in {time.time() - t0:.1f}s "
          f"(mean {n_bytes / (tok.vocab_size - 9):.2f} bytes per token); saved {out}/tokenizer.pkl, token_bytes.pt")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
