"""The all-MiniLM-L6-v2 text encoder: the sentence-transformers recipe, frozen vs fine-tuned parts,
and a tiny run through the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from itmatch.inference import Matcher
from itmatch.models import build_model
from itmatch.models.minilm import MiniLMTextEncoder, MiniLMTextProcessor, minilm_path
from itmatch.training.config import load_config
from itmatch.training.trainer import set_trainable, train

from conftest import write_precomp

SENTENCES = [
    "A brown dog jumps over a log on the grass.",
    "Two children are playing football in a park",
    "a man rides a bicycle down a busy city street .",
    "Snow.",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine: spinning OpenMP threads only slow this down
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoder() -> MiniLMTextEncoder:
    torch.manual_seed(0)
    return MiniLMTextEncoder(embed_dim=16)


@pytest.fixture(scope="module")
def processor() -> MiniLMTextProcessor:
    return MiniLMTextProcessor()


def test_embeddings_match_the_sentence_transformers_recipe(encoder, processor, monkeypatch):
    """Reference: transformers' own tokenizer and model, one sentence at a time (no padding), the
    mean of all token states, L2-normalised: sentence-transformers' Transformer -> Pooling(mean)
    -> Normalize pipeline of all-MiniLM-L6-v2."""
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    reference_model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    expected = []
    with torch.no_grad():
        for sentence in SENTENCES:
            tokens = tokenizer(sentence, return_tensors="pt")
            states = reference_model(**tokens).last_hidden_state[0]
            expected.append(torch.nn.functional.normalize(states.mean(dim=0), dim=0))
    expected = torch.stack(expected)

    encoded = processor.encode(SENTENCES)
    assert encoded == [tokenizer(s)["input_ids"] for s in SENTENCES]  # same word pieces, [CLS] ... [SEP]
    batch = processor.collate(encoded)  # padded: the mask must keep padding out of the mean
    assert batch["attention_mask"].sum(1).tolist() == [len(e) for e in encoded]
    encoder.eval()
    with torch.no_grad():
        ours = encoder.sentence_embedding(**batch)
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-5)
    # Sanity of the pretrained space: a paraphrase is closer than an unrelated sentence.
    with torch.no_grad():
        e = encoder.sentence_embedding(
            **processor(["a dog leaps over a fallen tree trunk", "stock prices fell sharply"])
        )
    assert float(ours[0] @ e[0]) > float(ours[0] @ e[1]) + 0.3
    # The joint-space output: projection + L2 norm.
    with torch.no_grad():
        joint = encoder(**batch)
    assert joint.shape == (4, 16)
    torch.testing.assert_close(joint.norm(dim=1), torch.ones(4))


def test_processor_truncates_and_pickles(processor):
    import pickle

    short = MiniLMTextProcessor(max_length=6)
    ids = short.encode(["one two three four five six seven eight"])[0]
    assert len(ids) == 6 and ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP] kept
    clone = pickle.loads(pickle.dumps(processor))  # DataLoader workers on spawn platforms
    assert clone.encode(SENTENCES[:1]) == processor.encode(SENTENCES[:1])


def test_frozen_transformer_trains_the_projection_only_and_is_memoised(processor):
    torch.manual_seed(0)
    model = build_model({"embed_dim": 16, "text_encoder": "minilm"}, vocab_size=1, feature_dim=8)
    parts = model.parts()
    text = model.text_encoder
    assert {id(p) for p in parts["text"]} == {id(p) for p in text.fc.parameters()}
    assert {id(p) for p in parts["text_backbone"]} == {id(p) for p in text.backbone.parameters()}

    calls = {"n": 0}
    text.backbone.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    batch = processor(SENTENCES)

    from itmatch.training.schedule import parse_stage

    frozen = parse_stage(
        {"name": "p", "epochs": 1, "lr": 1e-2, "train": ["image", "text"], "rank": "sum"}, "t"
    )
    set_trainable(model, frozen)
    model.train()
    assert not text.backbone.training  # no dropout in a frozen sentence encoder
    before = {k: v.clone() for k, v in text.state_dict().items()}
    out = text(**batch)
    lengths = len({len(e) for e in processor.encode(SENTENCES)})
    assert calls["n"] == lengths < len(SENTENCES)  # new sentences are encoded one pass per length
    out.sum().backward()
    torch.optim.SGD(parts["text"], lr=0.1).step()
    assert all(p.grad is None for p in parts["text_backbone"])
    after = text.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    first = text.sentence_embedding(**batch)
    assert calls["n"] == lengths  # memoised: the transformer did not run again
    with torch.no_grad():
        text.backbone.embeddings.word_embeddings.weight.mul_(1.5)  # a changed weight drops the memo
    assert not torch.allclose(text.sentence_embedding(**batch), first)
    assert calls["n"] > lengths

    fine_tune = parse_stage(
        {"name": "f", "epochs": 1, "lr": 1e-4, "train": ["text", "text_backbone"], "rank": "sum"}, "t"
    )
    set_trainable(model, fine_tune)
    model.train()
    assert text.backbone.training  # dropout on while the transformer trains
    text(**batch).sum().backward()
    assert all(p.grad is not None for p in text.backbone.encoder.layer[0].parameters())


def test_sentence_cache_stores_what_the_encoder_computes_and_spares_the_transformer(processor, tmp_path):
    from itmatch.features.sentences import cache_file, prime_sentence_cache

    torch.manual_seed(0)
    encoded = processor.encode(SENTENCES + SENTENCES[:2])  # duplicates are stored once
    fresh = MiniLMTextEncoder(embed_dim=16)
    with torch.no_grad():
        expected = fresh.sentence_embedding(**processor.collate(encoded))  # the in-memory memo's path
    # An independent expectation too: each sentence alone, unpadded, mean of its token states.
    with torch.no_grad():
        alone = torch.stack([
            torch.nn.functional.normalize(fresh.backbone(input_ids=torch.tensor([e])).last_hidden_state[0].mean(0), dim=0)
            for e in encoded])  # fmt: skip
    torch.testing.assert_close(expected, alone, rtol=0, atol=1e-5)

    first = MiniLMTextEncoder(embed_dim=16)
    first.requires_grad_(False)
    counts = prime_sentence_cache(first, encoded, tmp_path)
    assert counts == {"sentences": 4, "cached": 0, "computed": 4}
    assert cache_file(tmp_path, first).is_file()

    second = MiniLMTextEncoder(embed_dim=16)  # a new run: same weights, so the same cache file
    second.requires_grad_(False)
    calls = []
    second.backbone.register_forward_hook(lambda *a: calls.append(1))
    assert prime_sentence_cache(second, encoded, tmp_path) == {"sentences": 4, "cached": 4, "computed": 0}
    with torch.no_grad():
        got = second.sentence_embedding(**processor.collate(encoded))
    assert not calls  # every sentence came from the disk cache
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)

    with torch.no_grad():
        second.backbone.embeddings.word_embeddings.weight.mul_(1.5)  # other weights: another key
    assert cache_file(tmp_path, second) != cache_file(tmp_path, first)
    assert prime_sentence_cache(second, encoded[:1], tmp_path)["computed"] == 1
    second.backbone.requires_grad_(True)
    with pytest.raises(ValueError, match="trains"):
        prime_sentence_cache(second, encoded, tmp_path)


def test_tiny_run_trains_projection_then_transformer_and_serves(tmp_path):
    data = write_precomp(tmp_path / "precomp", {"train": 12, "dev": 6})
    recipe = {
        "name": "minilm_tiny",
        "model": {"text_encoder": "minilm", "embed_dim": 16},
        "stages": [
            {"name": "projection", "epochs": 1, "lr": 1e-3, "train": ["image", "text"], "rank": "sum"},
            {"name": "transformer", "epochs": 1, "lr": 1e-3, "lr_parts": {"text_backbone": 1e-5},
             "train": ["image", "text", "text_backbone"], "rank": "max_violation"},
        ],
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = load_config(path, ["data.format=precomp", f"data.path={data}", "data.val_split=dev",
                             "training.batch_size=20", "training.log_every=1", "data.vocab_min_count=1",
                             f"data.feature_cache={tmp_path / 'cache'}"])  # fmt: skip
    import itmatch.training.trainer as trainer_module

    snapshots = {}
    real_step = trainer_module.train_step

    def spy(model, batch, stage, *args):
        snapshots.setdefault(
            stage.name, {k: v.clone() for k, v in model.text_encoder.backbone.state_dict().items()}
        )
        assert set(batch["text"]) == {"input_ids", "attention_mask"}
        return real_step(model, batch, stage, *args)

    trainer_module.train_step = spy
    try:
        summary = train(cfg, tmp_path / "run")
    finally:
        trainer_module.train_step = real_step
    # The selected checkpoint is the first epoch with the highest validation rsum, and it scores
    # that rsum again when the dev split is embedded from best.pt by the inference path.
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val_records = [r for r in logged if "val/rsum" in r]
    assert len(val_records) == 2  # one per epoch
    top = max(r["val/rsum"] for r in val_records)
    assert summary["best"] == next(r for r in val_records if r["val/rsum"] == top)
    from itmatch.data import load_corpus
    from itmatch.evaluation.recall import evaluate_embeddings

    im, tx = Matcher.from_run(tmp_path / "run", "best").embed_corpus(load_corpus("precomp", str(data), "dev"))
    assert evaluate_embeddings(im, tx)["rsum"] == pytest.approx(top, abs=1e-9)
    assert all(torch.equal(v, snapshots["transformer"][k]) for k, v in snapshots["projection"].items())
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    changed = [
        k
        for k, v in snapshots["transformer"].items()
        if not torch.equal(v, final["text_encoder.backbone." + k])
    ]
    assert changed  # the transformer moved in the stage that trains it
    # The frozen stage's sentence embeddings went to the on-disk cache: 5 x (12 + 6) captions.
    (cached,) = (tmp_path / "cache" / "sentences").glob("minilm-*.npz")
    with np.load(cached, allow_pickle=False) as z:
        assert z["vectors"].shape == (len(set(map(tuple, MiniLMTextProcessor().encode(
            [c for split in ("train", "dev") for c in (data / f"{split}_caps.txt").read_text().splitlines()])))), 384)  # fmt: skip
    # The GRU vocabulary is still written (unused by MiniLM, which brings its own tokenizer).
    assert json.loads((tmp_path / "run" / "vocab.json").read_text())["words"]
    matcher = Matcher.from_run(tmp_path / "run", "last")
    emb = matcher.embed_texts(["a photo of w1 w2 w3"])
    assert emb.shape == (1, 16) and abs(float(emb.norm()) - 1) < 1e-5


def test_text_tune_layers_splits_the_transformer_into_parts():
    model = build_model({"embed_dim": 16, "text_encoder": "minilm", "text_tune_layers": 2}, vocab_size=1, feature_dim=8)
    parts, text = model.parts(), model.text_encoder
    top = [p for layer in text.backbone.encoder.layer[4:] for p in layer.parameters()]
    assert [id(p) for p in parts["text_backbone"]] == [id(p) for p in top]
    every = [id(p) for ps in parts.values() for p in ps]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each parameter in exactly one part
    assert {id(p) for p in parts["text_base"]} == {id(p) for p in text.backbone.parameters()} - {id(p) for p in top}
    for bad, match in (({"text_tune_layers": 7}, r"expected 1 to 6"), ({"text_encoder": "gru", "text_tune_layers": 1}, "only the MiniLM")):
        with pytest.raises(Exception, match=match):
            build_model({"embed_dim": 16, "text_encoder": "minilm", **bad}, vocab_size=5, feature_dim=8)


def test_top_layer_fine_tuning_moves_only_that_layer_and_exports_only_it(tmp_path):
    """A tiny run fine-tuning the top transformer layer: every other transformer weight stays the
    package's, and the exported model ships that layer alone yet embeds exactly as the run."""
    from itmatch.models.minilm import load_minilm
    from itmatch.pretrained import WEIGHTS, export_model, folder_bytes

    data = write_precomp(tmp_path / "precomp", {"train": 12, "dev": 6})
    recipe = {
        "name": "minilm_top",
        "model": {"text_encoder": "minilm", "embed_dim": 16, "text_tune_layers": 1},
        "stages": [{"name": "top", "epochs": 1, "lr": 1e-3, "lr_parts": {"text_backbone": 1e-4},
                    "train": ["image", "text", "text_backbone"], "rank": "sum"}],
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = load_config(path, ["data.format=precomp", f"data.path={data}", "data.val_split=dev", "training.batch_size=20",
                             "data.vocab_min_count=1", f"data.feature_cache={tmp_path / 'cache'}"])  # fmt: skip
    train(cfg, tmp_path / "run")
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    package = load_minilm().state_dict()
    changed = sorted(k for k, v in package.items() if not torch.equal(v, final["text_encoder.backbone." + k]))
    assert changed and all(k.startswith("encoder.layer.5.") for k in changed)

    manifest = export_model(tmp_path / "run", tmp_path / "model", checkpoint="last")
    (text,) = [b for b in manifest["backbones"] if b["role"] == "text"]
    assert text["shipped"] is True and manifest["format_version"] == 2
    assert text["shipped_tensors"] == ["text_encoder.backbone." + k for k in changed]
    saved = torch.load(tmp_path / "model" / WEIGHTS, weights_only=True)
    assert sorted(k for k in saved if k.startswith("text_encoder.backbone.")) == text["shipped_tensors"]
    assert folder_bytes(tmp_path / "model") < 12 * 2**20  # one of six layers, not the 90 MB transformer
    exported, original = Matcher.from_pretrained(tmp_path / "model"), Matcher.from_run(tmp_path / "run", "last")
    assert torch.equal(exported.embed_texts(SENTENCES), original.embed_texts(SENTENCES))
    del saved[text["shipped_tensors"][0]]  # a model folder that lost a shipped tensor is refused by name
    torch.save(saved, tmp_path / "model" / WEIGHTS)
    manifest["weights"]["sha256"] = __import__("itmatch.fileio", fromlist=["file_sha256"]).file_sha256(tmp_path / "model" / WEIGHTS)
    (tmp_path / "model" / "itmatch-model.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="lacks tensors its manifest says it ships"):
        Matcher.from_pretrained(tmp_path / "model")


# --------------------------------------------------------------------------------------------
# text_pool: gpo (VSE-infinity's text side over MiniLM token states)


@pytest.fixture(scope="module")
def gpo_encoder() -> MiniLMTextEncoder:
    torch.manual_seed(0)
    return MiniLMTextEncoder(embed_dim=16, pool="gpo", memoize_frozen=False).eval()


def _alone_token_states(encoder: MiniLMTextEncoder, encoded: list[list[int]]) -> list[torch.Tensor]:
    """Each sentence through the transformer alone, unpadded: its T x 384 token states."""
    with torch.no_grad():
        return [encoder.backbone(input_ids=torch.tensor([e])).last_hidden_state[0] for e in encoded]


def test_gpo_text_pooling_is_gpo_over_each_sentences_own_projected_tokens(gpo_encoder, processor):
    encoded = processor.encode(SENTENCES)
    batch = processor.collate(encoded)
    assert len(set(map(len, encoded))) > 1  # variable lengths: the batch pads all but the longest
    with torch.no_grad():
        got = gpo_encoder(**batch)
        expected = torch.cat([
            torch.nn.functional.normalize(
                gpo_encoder.pool(gpo_encoder.fc(s).unsqueeze(0), torch.tensor([len(s)])), dim=-1)
            for s in _alone_token_states(gpo_encoder, encoded)])  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)  # padding never changes a sentence


def test_gpo_text_pooling_with_forced_weights_is_max_or_mean_over_real_tokens(gpo_encoder, processor, monkeypatch):
    encoded = processor.encode(SENTENCES)
    batch = processor.collate(encoded)
    projected = [gpo_encoder.fc(s) for s in _alone_token_states(gpo_encoder, encoded)]
    width = batch["input_ids"].shape[1]

    def forced(kind):
        def weights(lengths, k):
            assert k == width
            w = torch.zeros(len(lengths), k)
            for b, n in enumerate(lengths.tolist()):
                if kind == "max":
                    w[b, 0] = 1.0
                else:
                    w[b, :n] = 1.0 / n
            return w

        return weights

    for kind, reduce in (("max", lambda p: p.max(dim=0).values), ("mean", lambda p: p.mean(dim=0))):
        monkeypatch.setattr(gpo_encoder.pool, "rank_weights", forced(kind))
        with torch.no_grad():
            got = gpo_encoder(**batch)
            expected = torch.nn.functional.normalize(torch.stack([reduce(p) for p in projected]), dim=-1)
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def _frozen_copy(live: MiniLMTextEncoder) -> tuple[MiniLMTextEncoder, list[int]]:
    """A frozen, memoising GPO encoder with ``live``'s weights, and a list that grows by one per transformer pass."""
    encoder = MiniLMTextEncoder(embed_dim=16, pool="gpo")
    encoder.load_state_dict(live.state_dict())
    encoder.requires_grad_(False)
    encoder.eval()
    calls: list[int] = []
    encoder.backbone.register_forward_hook(lambda *a: calls.append(1))
    return encoder, calls


def test_gpo_text_memo_and_disk_cache_hold_float16_token_states(processor, tmp_path):
    from itmatch.features.sentences import cache_file, prime_sentence_cache

    encoded = processor.encode(SENTENCES + SENTENCES[:1])
    batch = processor.collate(encoded)
    torch.manual_seed(0)
    live = MiniLMTextEncoder(embed_dim=16, pool="gpo", memoize_frozen=False).eval()
    with torch.no_grad():
        reference = live(**batch)  # no memo: float32 token states
    first, calls = _frozen_copy(live)
    with torch.no_grad():
        memoised = first(**batch)
        again = first(**batch)
    assert len(calls) == len(set(map(len, encoded)))  # one pass per length, then none
    torch.testing.assert_close(again, memoised, rtol=0, atol=0)
    torch.testing.assert_close(memoised, reference, rtol=0, atol=2e-3)  # float16 token states
    states = first.sentence_embedding(**batch)
    assert states.shape == (len(encoded), batch["input_ids"].shape[1], 384)
    lengths = batch["attention_mask"].sum(1)
    assert all(float(states[i, n:].abs().sum()) == 0 for i, n in enumerate(lengths.tolist()))

    counts = prime_sentence_cache(first, encoded, tmp_path)
    assert counts == {"sentences": 4, "cached": 0, "computed": 4}
    path = cache_file(tmp_path, first)
    assert path.name.startswith("minilm-tokens-")
    with np.load(path, allow_pickle=False) as z:
        assert z["vectors"].dtype == np.float16
        assert z["vectors"].shape == (sum(len(e) for e in encoded[:4]), 384)  # one row per token
    second, second_calls = _frozen_copy(live)
    assert prime_sentence_cache(second, encoded, tmp_path)["cached"] == 4
    with torch.no_grad():
        from_disk = second(**batch)
    assert not second_calls
    torch.testing.assert_close(from_disk, memoised, rtol=0, atol=0)  # the same float16 values
    mean = MiniLMTextEncoder(embed_dim=16)
    assert cache_file(tmp_path, mean).name.startswith("minilm-") and cache_file(tmp_path, mean) != path


def test_gpo_text_model_builds_from_config_and_its_pooling_trains_as_part_text():
    model = build_model({"embed_dim": 16, "text_encoder": "minilm", "text_pool": "gpo"}, vocab_size=1, feature_dim=8)
    assert model.text_encoder.pool is not None
    text_part = {id(p) for p in model.parts()["text"]}
    assert {id(p) for p in model.text_encoder.pool.parameters()} <= text_part
    with pytest.raises(Exception, match="text_pool"):
        MiniLMTextEncoder(embed_dim=16, pool="max")


def test_tiny_gpo_text_run_caches_token_states_trains_and_serves(tmp_path):
    data = write_precomp(tmp_path / "precomp", {"train": 12, "dev": 6})
    recipe = {
        "name": "minilm_gpo_tiny",
        "model": {"text_encoder": "minilm", "text_pool": "gpo", "embed_dim": 16, "text_tune_layers": 1},
        "stages": [
            {"name": "projection", "epochs": 1, "lr": 1e-3, "train": ["image", "text"], "rank": "sum"},
            {"name": "transformer", "epochs": 1, "lr": 1e-4, "train": ["image", "text", "text_backbone"],
             "rank": "max_violation"},
        ],
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = load_config(path, ["data.format=precomp", f"data.path={data}", "data.val_split=dev",
                             "training.batch_size=20", "data.vocab_min_count=1",
                             f"data.feature_cache={tmp_path / 'cache'}"])  # fmt: skip
    summary = train(cfg, tmp_path / "run")
    (cached,) = (tmp_path / "cache" / "sentences").glob("minilm-*.npz")
    assert cached.name.startswith("minilm-tokens-")  # the frozen stage read token states
    first = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert "text_encoder.pool.gru.weight_ih_l0" in first
    from itmatch.data import load_corpus
    from itmatch.evaluation.recall import evaluate_embeddings

    matcher = Matcher.from_run(tmp_path / "run", "best")
    assert matcher.model.text_encoder.pool is not None
    im, tx = matcher.embed_corpus(load_corpus("precomp", str(data), "dev"))
    assert evaluate_embeddings(im, tx)["rsum"] == pytest.approx(summary["best"]["val/rsum"], abs=1e-9)


@pytest.mark.parametrize("pool", ["mean", "gpo"])
def test_training_passes_in_length_groups_give_the_one_pass_values_and_gradients(processor, pool):
    """Reference: the whole padded batch in one transformer pass (what the grouped pass replaces)."""
    from itmatch.models import minilm

    words = "a dog runs on the green grass near two small children playing with a red ball".split()
    texts = [" ".join(words[: 1 + (7 * i) % len(words)]) for i in range(minilm.LENGTH_GROUP + 9)]
    batch = processor.collate(processor.encode(texts))
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 5
    torch.manual_seed(0)
    enc = MiniLMTextEncoder(embed_dim=16, pool=pool).eval()  # eval: no dropout, so both are deterministic
    assert not enc.backbone_frozen()  # a training transformer: no memo, the grouped pass
    results = []
    for grouped in (False, True):
        enc.zero_grad()
        widths = []
        hook = enc.backbone.register_forward_hook(lambda mod, args, kw, out, widths=widths: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
        if grouped:
            out = enc(**batch)
        else:
            states = enc._encode(**batch)
            out = l2_normalize_rows(enc, states, batch["attention_mask"])
        hook.remove()
        out.pow(2).mul(torch.arange(out.shape[1])).sum().backward()
        grad = enc.backbone.encoder.layer[0].attention.self.query.weight.grad.clone()
        results.append((out.detach(), grad, widths))
    (one, g_one, w_one), (grp, g_grp, w_grp) = results
    assert w_one == [batch["input_ids"].shape[1]] and len(w_grp) == 2 and max(w_grp) == w_one[0] and min(w_grp) < w_one[0]
    torch.testing.assert_close(grp, one, rtol=0, atol=2e-5)
    torch.testing.assert_close(g_grp, g_one, rtol=1e-3, atol=1e-5)


def l2_normalize_rows(enc: MiniLMTextEncoder, encoded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder's head over a one-pass :meth:`_encode` output, written out."""
    if enc.pool is None:
        return torch.nn.functional.normalize(enc.fc(encoded), dim=-1)
    return torch.nn.functional.normalize(enc.pool(enc.fc(encoded), mask.sum(1)), dim=-1)
