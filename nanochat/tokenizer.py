"""
The BPE tokenizer: GPT-4 style byte-level BPE, trained with rustbpe, run with tiktoken.

A tokenizer lives in a directory, in upstream nanochat's layout, so a dir made by upstream's
`scripts/tok_train.py` (e.g. ~/.cache/nanochat/tokenizer) loads here unchanged, and back:

    tokenizer.pkl     a pickled tiktoken.Encoding: the merge ranks (token bytes -> id), the regex
                      that splits text into chunks before BPE, and the special tokens (ids after
                      the merges, <|bos|> first)
    token_bytes.pt    int32 [vocab_size]: how many UTF-8 bytes each token id stands for, 0 for the
                      special tokens; bits per byte divides the loss by these (nanochat/loss_eval.py)

tokenizer.pkl is a pickle, as upstream's: loading it runs whatever code it holds. So a dir that
someone else could have written is refused before it is opened (`check_trusted`): the dir and the
pickle must belong to this user (or root) and be writable by no one else. token_bytes.pt is read
with torch's weights_only loader, which runs no code.

Every document starts with <|bos|>: it separates documents packed into one row, and every row
starts with one (nanochat/data.py). The other special tokens only matter for chat finetuning;
they are reserved here so the ids match upstream's.

rustbpe and tiktoken are imported where they are used: synthetic-data runs need neither.
"""

from __future__ import annotations

import grp
import os
import pickle
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path

import torch

BOS = "<|bos|>"
SPECIAL_TOKENS = [
    BOS,  # begins every document
    "<|user_start|>",  # the rest render chat conversations (finetuning, not used by pretraining)
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
]

# How text is cut into chunks before BPE merges (merges never cross a chunk boundary): GPT-4's
# pattern, except that digits group by at most 2 (not 3), which spends fewer of a small vocab's
# slots on numbers. Contractions, letter runs with one leading non-letter, 1-2 digits,
# punctuation runs, newlines, other whitespace.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

DEFAULT_TOKENIZER_DIR = "~/.cache/nanochat/tokenizer"
HOW_TO_MAKE = (
    "train one: python -m nanochat.tok_train --data-dir DATA_DIR --tokenizer-dir DIR --vocab-size 32768"
)


class TokenizerError(Exception):
    """A tokenizer dir that is missing or unreadable; the message is one line that says what to do."""


def check_trusted(path: Path, st: os.stat_result) -> None:
    """Refuse a tokenizer dir or pickle that someone other than this user could have written:
    owned by another user (root is trusted), writable by every user, or writable by a group that
    is not this user's own (a user private group, named after the user, with no other member)."""
    me = os.geteuid()
    why = None
    if st.st_uid not in (me, 0):
        why = f"belongs to uid {st.st_uid}, not to you (uid {me})"
    elif st.st_mode & stat.S_IWOTH:
        why = f"is writable by every user (mode {stat.S_IMODE(st.st_mode):o})"
    elif st.st_mode & stat.S_IWGRP and not _own_group(st.st_gid):
        why = f"is writable by group {_group_name(st.st_gid)} (mode {stat.S_IMODE(st.st_mode):o})"
    if why:
        raise TokenizerError(
            f"{path} {why}: tokenizer.pkl is a pickle and loading it runs the code it holds, "
            f"so it is not loaded (chown it to you and chmod go-w it, or train your own)"
        )


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _own_group(gid: int) -> bool:
    """Is `gid` this user's private group (named after the user, no other member)?"""
    try:
        me, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(gid)
    except KeyError:
        return False
    return group.gr_name == me and set(group.gr_mem) <= {me}


class Tokenizer:
    """A tiktoken Encoding plus the bytes-per-token table that bits per byte needs."""

    def __init__(self, enc, token_bytes: torch.Tensor | None = None):
        self.enc = enc
        # upstream names the document delimiter <|bos|>; tiktoken's own encodings call it <|endoftext|>
        names = enc.special_tokens_set
        bos_name = BOS if BOS in names else "<|endoftext|>" if "<|endoftext|>" in names else None
        if bos_name is None:
            raise TokenizerError(f"the encoding has no {BOS} (nor <|endoftext|>) special token")
        self.bos_id: int = enc.encode_single_token(bos_name)
        self.token_bytes = token_bytes if token_bytes is not None else self.compute_token_bytes()

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    # -- encode / decode -----------------------------------------------------------------------

    def encode(self, text: str, prepend_bos: bool = False) -> list[int]:
        """Ordinary text to ids: special-token strings in `text` are encoded as plain text."""
        ids = self.enc.encode_ordinary(text)
        return [self.bos_id, *ids] if prepend_bos else ids

    def encode_batch(self, texts: list[str], prepend_bos: bool = False, threads: int = 4) -> list[list[int]]:
        """Many documents at once, on `threads` threads (tiktoken releases the GIL)."""
        batch = self.enc.encode_ordinary_batch(texts, num_threads=threads)
        if prepend_bos:
            batch = [[self.bos_id, *ids] for ids in batch]
        return batch

    def encode_special(self, name: str) -> int:
        return self.enc.encode_single_token(name)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    # -- the bytes table -----------------------------------------------------------------------

    def compute_token_bytes(self) -> torch.Tensor:
        """int32 [vocab]: bytes of each token (from its raw bytes, not a decoded string: a token
        can be part of a multi-byte character), 0 for special tokens (not counted by bpb)."""
        special = {self.enc.encode_single_token(s) for s in self.enc.special_tokens_set}
        counts = [
            0 if i in special else len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)
        ]
        return torch.tensor(counts, dtype=torch.int32)

    # -- training, saving, loading -------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Learn vocab_size - len(SPECIAL_TOKENS) byte-level BPE tokens from `texts` with rustbpe
        (the 256 single bytes are always tokens), then append the special tokens."""
        import rustbpe
        import tiktoken

        n_merged = vocab_size - len(SPECIAL_TOKENS)
        if n_merged < 256:
            raise ValueError(f"vocab size {vocab_size} is too small: at least {256 + len(SPECIAL_TOKENS)}")
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(texts), n_merged, pattern=SPLIT_PATTERN)
        ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
        specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        enc = tiktoken.Encoding(name="rustbpe", pat_str=trainer.get_pattern(), mergeable_ranks=ranks,
                                special_tokens=specials)  # fmt: skip
        return cls(enc)

    def save(self, tokenizer_dir: str | Path) -> None:
        """Write tokenizer.pkl and token_bytes.pt (each through a temporary name)."""
        d = Path(tokenizer_dir).expanduser()
        d.mkdir(mode=0o755, parents=True, exist_ok=True)  # writable by its owner only, whatever the umask
        tmp = d / "tokenizer.pkl.tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "wb") as f:
            pickle.dump(self.enc, f)
        os.replace(tmp, d / "tokenizer.pkl")
        torch.save(self.token_bytes, d / "token_bytes.pt.tmp")
        os.replace(d / "token_bytes.pt.tmp", d / "token_bytes.pt")

    @classmethod
    def from_dir(cls, tokenizer_dir: str | Path) -> Tokenizer:
        """Load upstream's layout. The pickle runs code as it loads, as upstream's: a dir or a
        pickle someone else could have written is refused first (check_trusted)."""
        d = Path(tokenizer_dir).expanduser()
        pkl, tb = d / "tokenizer.pkl", d / "token_bytes.pt"
        if not d.is_dir():
            raise TokenizerError(f"--tokenizer-dir {tokenizer_dir}: no such directory; {HOW_TO_MAKE}")
        if not pkl.is_file():
            raise TokenizerError(f"--tokenizer-dir {tokenizer_dir}: no tokenizer.pkl; {HOW_TO_MAKE}")
        try:
            import tiktoken  # noqa: F401  (the pickle needs it)
        except ImportError:
            raise TokenizerError("--data parquet needs tiktoken: pip install -e '.[train]'") from None
        check_trusted(d, os.stat(d))
        try:
            with open(pkl, "rb") as f:
                check_trusted(pkl, os.fstat(f.fileno()))  # the file opened, not a name that could change
                enc = pickle.load(f)
        except TokenizerError:
            raise
        except Exception as e:  # a truncated or foreign pickle: one line, not a traceback
            raise TokenizerError(
                f"{pkl}: not a pickled tiktoken encoding ({type(e).__name__}: {e})"
            ) from None
        if not hasattr(enc, "encode_ordinary_batch"):
            raise TokenizerError(f"{pkl}: holds a {type(enc).__name__}, not a tiktoken Encoding")
        token_bytes = None
        if tb.is_file():
            try:
                token_bytes = torch.load(tb, map_location="cpu", weights_only=True).to(torch.int32)
            except Exception as e:  # truncated, or not a tensor
                why = " ".join(str(e).split())[:200]
                raise TokenizerError(
                    f"{tb}: not a readable token table ({type(e).__name__}: {why})"
                ) from None
            if token_bytes.shape != (enc.n_vocab,):
                raise TokenizerError(f"{tb}: {tuple(token_bytes.shape)} entries for a vocab of {enc.n_vocab}")
        return cls(enc, token_bytes)
