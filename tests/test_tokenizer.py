"""BPE tokenizer: round trips, special tokens, upstream's dir layout, training from shards."""

import os
import pickle
import shutil
import stat

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("tiktoken")
pytest.importorskip("rustbpe")
import tiktoken  # noqa: E402

from nanochat import tok_train  # noqa: E402
from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, TokenizerError  # noqa: E402


@pytest.fixture(scope="module")
def tok(smoke_corpus):
    return Tokenizer.from_dir(smoke_corpus / "tokenizer")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_round_trip_of_arbitrary_text(tok, text):
    # any unicode (surrogates aside: not encodable as UTF-8), special-token look-alikes included
    text = text.encode("utf-8", "replace").decode("utf-8")
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode(text, prepend_bos=True)
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_special_tokens_are_ids_past_the_merges_and_text_that_spells_them_is_plain_text(tok, smoke_corpus):
    assert tok.vocab_size == 1024
    ids = [tok.encode_special(s) for s in SPECIAL_TOKENS]
    assert ids == list(range(1024 - len(SPECIAL_TOKENS), 1024))  # upstream's order, after the merges
    assert tok.bos_id == ids[0] and tok.decode([tok.bos_id]) == "<|bos|>"
    spelled = tok.encode("a <|bos|> b <|assistant_end|>")
    assert not set(spelled) & set(ids)
    assert (
        tok.decode([tok.bos_id, *tok.encode("hi"), tok.encode_special("<|user_end|>")])
        == "<|bos|>hi<|user_end|>"
    )
    batch = tok.encode_batch(["one doc", "", "héllo wörld 12345"], prepend_bos=True)
    assert [b[0] for b in batch] == [tok.bos_id] * 3 and batch[1] == [tok.bos_id]
    assert tok.decode(batch[2][1:]) == "héllo wörld 12345"
    # the bytes table: specials count 0, every other token its raw byte length
    tb = tok.token_bytes
    assert tb.dtype == torch.int32 and tb.shape == (1024,)
    assert all(int(tb[i]) == 0 for i in ids)
    assert all(int(tb[i]) == 1 for i in range(256))  # the single bytes come first
    assert int(tb[:1015].min()) >= 1 and int(tb.max()) > 3  # merges learned multi-byte tokens
    saved = torch.load(smoke_corpus / "tokenizer" / "token_bytes.pt", weights_only=True)
    assert torch.equal(saved, tb)


def test_a_tokenizer_dir_in_upstreams_layout_loads(tmp_path):
    """Written the way upstream nanochat's tok_train writes it (a pickled tiktoken Encoding with
    its split pattern and special tokens, token_bytes.pt), by hand: no code of ours involved."""
    ranks = {bytes([i]): i for i in range(256)}
    for merged in (b"th", b"the", b" the", b"in", b"ing"):
        ranks[merged] = len(ranks)
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(
        name="rustbpe", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )
    with open(tmp_path / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    token_bytes = [
        0 if i in specials.values() else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)
    ]
    torch.save(torch.tensor(token_bytes, dtype=torch.int32), tmp_path / "token_bytes.pt")

    t = Tokenizer.from_dir(tmp_path)
    assert t.vocab_size == 256 + 5 + 9 and t.bos_id == 261
    # chunks "the", " thing"; merges by rank: th, the | th, in, ing
    ids = t.encode("the thing", prepend_bos=True)
    assert ids == [261, ranks[b"the"], ord(" "), ranks[b"th"], ranks[b"ing"]]
    assert t.decode(ids) == "<|bos|>the thing"
    assert torch.equal(t.token_bytes, torch.tensor(token_bytes, dtype=torch.int32))
    # token_bytes.pt is optional: computed from the encoding when missing
    (tmp_path / "token_bytes.pt").unlink()
    assert torch.equal(Tokenizer.from_dir(tmp_path).token_bytes, torch.tensor(token_bytes, dtype=torch.int32))


def test_bad_tokenizer_dirs_say_what_to_do(tmp_path):
    with pytest.raises(TokenizerError, match="no such directory; train one: python -m nanochat.tok_train"):
        Tokenizer.from_dir(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="no tokenizer.pkl"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.pkl").write_bytes(b"not a pickle")
    with pytest.raises(TokenizerError, match="not a pickled tiktoken encoding"):
        Tokenizer.from_dir(tmp_path)


def test_tok_train_cli_trains_on_the_training_shards_and_keeps_an_existing_tokenizer(
    smoke_corpus, tmp_path, capsys
):
    out = tmp_path / "tok"
    args = ["--data-dir", str(smoke_corpus / "base_data"), "--tokenizer-dir", str(out), "--vocab-size", "300"]
    assert tok_train.main([*args, "--max-chars", "20000"]) == 0
    t = Tokenizer.from_dir(out)
    assert t.vocab_size == 300 and t.decode(t.encode("Return the value.")) == "Return the value."
    assert "Trained a 300-token BPE tokenizer" in capsys.readouterr().out
    before = (out / "tokenizer.pkl").read_bytes()
    with pytest.raises(SystemExit) as e:
        tok_train.main(args)
    assert e.value.code == 2 and (out / "tokenizer.pkl").read_bytes() == before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a tokenizer.pkl" in err[0]
    with pytest.raises(SystemExit) as e:
        tok_train.main(["--data-dir", str(tmp_path / "nope"), "--tokenizer-dir", str(tmp_path / "t2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "nanochat.smoke_data" in err[0]


def _own_copy(smoke_corpus, tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(smoke_corpus / "tokenizer", d)
    return d


def test_a_tokenizer_dir_someone_else_could_write_is_refused_before_the_pickle_runs(smoke_corpus, tmp_path):
    """tokenizer.pkl runs code as it loads: a dir or pickle writable by every user, or owned by
    another user, is refused in one line before it is opened; a truncated token table too."""
    d = _own_copy(smoke_corpus, tmp_path)
    assert Tokenizer.from_dir(d).vocab_size == 1024
    for target in (d, d / "tokenizer.pkl"):
        target.chmod(target.stat().st_mode | 0o002)
        with pytest.raises(TokenizerError) as e:
            Tokenizer.from_dir(d)
        assert str(e.value).startswith(f"{target} is writable by every user (mode ") and "\n" not in str(
            e.value
        )
        assert "tokenizer.pkl is a pickle and loading it runs the code it holds" in str(e.value)
        target.chmod(target.stat().st_mode & ~0o002)
    if os.geteuid() == 0:  # only root can give a file away
        os.chown(d / "tokenizer.pkl", 12345, 12345)
        with pytest.raises(
            TokenizerError, match=r"tokenizer\.pkl belongs to uid 12345, not to you \(uid 0\)"
        ):
            Tokenizer.from_dir(d)
        os.chown(d / "tokenizer.pkl", 0, 0)
    tb = d / "token_bytes.pt"
    tb.write_bytes(tb.read_bytes()[:100])
    with pytest.raises(TokenizerError, match=r"token_bytes\.pt: not a readable token table \("):
        Tokenizer.from_dir(d)


def test_a_saved_tokenizer_is_writable_by_its_owner_alone_whatever_the_umask(smoke_corpus, tmp_path):
    old = os.umask(0)
    try:
        Tokenizer.from_dir(smoke_corpus / "tokenizer").save(tmp_path / "t")
    finally:
        os.umask(old)
    assert [
        stat.S_IMODE(p.stat().st_mode) & 0o022 for p in (tmp_path / "t", tmp_path / "t" / "tokenizer.pkl")
    ] == [0, 0]
    assert Tokenizer.from_dir(tmp_path / "t").vocab_size == 1024
