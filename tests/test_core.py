"""Model core: spliced templates, the fast answer path vs the reference path, heads, adapter, metrics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM, AutoTokenizer

from puma_ray.core.llm import FrozenLM
from puma_ray.core.metrics import USER_SUMS, ClickScores, RatingSums, SortedAUC, UserTotals, auc, split_metrics, uauc, user_row
from puma_ray.errors import PumaError
from puma_ray.core.modules import (AdapterConfig, ClickHead, MigrationAdapter, RatingHead, SoftPromptTable, sparse_adam,
                                   adapter_param_count)
from puma_ray.core.templates import (CLICK_ANSWERS, HISTORY, RATING_ANSWERS, SampleEncoder, encode_template,
                                     load_template_text, split_template)
from puma_ray.core.tiny_models import FAMILIES

TEMPLATES = [("rating_amazon", RATING_ANSWERS), ("rating_yelp", RATING_ANSWERS), ("click_mind", CLICK_ANSWERS)]
# Different lengths on purpose; the long title pushes past gemma3's 64-token sliding window.
TITLES = ["Toy Story (1995)", "X", "The Crimson Harbor of the Long Night, Part " + "Two " * 25]
HISTORIES = [["Heat (1995)", "Up"], [], [f"Old headline {k}" for k in range(5)]]
# fp32 on CPU: the paths differ only in summation order.
ATOL = 1e-5


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {f: (AutoModelForCausalLM.from_pretrained(p), AutoTokenizer.from_pretrained(p))
            for f, (_, p) in tiny_models.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("template,answers", TEMPLATES, ids=[t for t, _ in TEMPLATES])
@pytest.mark.parametrize("prompt_len", [1, 2])
@pytest.mark.parametrize("prefix_cache", [True, False], ids=["cache", "nocache"])
def test_fast_path_equals_full_forward(loaded, family, template, answers, prompt_len, prefix_cache):
    model, tok = loaded[family]
    lm = FrozenLM(model, tok, load_template_text(template), answers, prompt_len=prompt_len, prefix_cache=prefix_cache)
    batch = lm.encode(TITLES, HISTORIES)
    assert len(set(batch.lengths.tolist())) == 3  # mixed lengths
    soft = torch.empty(3, prompt_len, model.config.hidden_size).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
    fast = lm.answer_logits(soft, batch)
    assert fast.shape == (3, len(answers)) and fast.dtype == torch.float32
    with torch.no_grad():
        ref = lm.reference_logits(soft, batch, append_answer=True)
        plain = lm.reference_logits(soft, batch, append_answer=False)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=ATOL)
    torch.testing.assert_close(plain, ref, rtol=1e-4, atol=ATOL)


class OlderDecoder(torch.nn.Module):
    """A decoder with the pre-5.24 transformers keyword for its KV cache (`past_key_values`)."""

    def __init__(self, decoder) -> None:
        super().__init__()
        self.inner = decoder

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        out = self.inner(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, cache=past_key_values)
        return out


def test_prefix_cache_goes_under_the_keyword_the_decoder_takes(loaded, monkeypatch):
    model, tok = loaded["llama"]
    older = OlderDecoder(model.get_decoder())
    monkeypatch.setattr(model, "get_decoder", lambda: older)
    lm = FrozenLM(model, tok, load_template_text("rating_amazon"), RATING_ANSWERS)
    assert lm.cache_arg == "past_key_values"
    batch = lm.encode(TITLES, HISTORIES)
    soft = torch.zeros(3, 1, model.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(lm.answer_logits(soft, batch), lm.reference_logits(soft, batch), rtol=1e-4, atol=ATOL)
    monkeypatch.setattr(older, "forward", lambda inputs_embeds, attention_mask=None: None)
    with pytest.raises(PumaError, match="no KV cache"):
        FrozenLM(model, tok, load_template_text("rating_amazon"), RATING_ANSWERS)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_reach_only_the_soft_prompts(loaded, family):
    model, tok = loaded[family]
    lm = FrozenLM(model, tok, load_template_text("rating_amazon"), RATING_ANSWERS)
    soft = torch.zeros(2, 1, model.config.hidden_size, requires_grad=True)
    lm.answer_logits(soft, lm.encode(TITLES[:2])).sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_answers_follow_each_tokenizers_spelling(loaded):
    """Qwen2's tokenizer class splits the space off digits; the others merge " 4"."""
    spelled = {}
    for family, (model, tok) in loaded.items():
        t = encode_template(tok, load_template_text("rating_amazon"), RATING_ANSWERS, 512)
        spelled[family] = tok.convert_ids_to_tokens(t.answer_ids[3])
        assert len(set(t.answer_ids)) == 5
    assert spelled["qwen2"] == "4" and spelled["llama"] == "Ġ4"


def test_bos_comes_from_the_tokenizer(loaded):
    for family, (model, tok) in loaded.items():
        t = encode_template(tok, load_template_text("rating_amazon"), RATING_ANSWERS, 512)
        assert (t.prefix_ids[0] == tok.bos_token_id) == FAMILIES[family].add_bos


def test_multi_token_answer_fails_naming_tokenizer_and_answer(loaded):
    _, tok = loaded["llama"]
    with pytest.raises(PumaError, match=r"not a single token.*Crimsonharborish"):
        encode_template(tok, load_template_text("rating_amazon"), ("Crimsonharborish", "No"), 512)


@pytest.mark.parametrize("text,match", [
    ("no user here <ItemTitle>", "<UserID>"), ("<UserID> <ItemTitle> <ItemTitle>", "<ItemTitle>"),
    ("<UserID> <ItemTitle> <ItemTitleList> <ItemTitleList>", "<ItemTitleList>"),
])
def test_template_validation(text, match):
    with pytest.raises(PumaError, match=match):
        split_template(text)


def test_unknown_template_lists_shipped_ones():
    with pytest.raises(PumaError, match="rating_amazon"):
        load_template_text("nonexistent_template")


def test_truncation_drops_history_then_title_never_the_prompt(loaded):
    _, tok = loaded["llama"]
    text = load_template_text("click_mind")
    full = encode_template(tok, text, CLICK_ANSWERS, 10_000)
    fixed = SampleEncoder(tok, full, 3).fixed
    t = encode_template(tok, text, CLICK_ANSWERS, fixed + 12)
    enc = SampleEncoder(tok, t, 3)
    title = "Alpha Beta Gamma Delta Epsilon Zeta Eta Theta Iota Kappa Lambda Mu Nu Xi"
    ids = enc(title, ["Old one", "Older two", "Newest three"])
    assert ids.count(-1) == 3  # the soft prompt survives whole
    assert len(ids) + len(t.prefix_ids) <= t.max_length
    assert HISTORY in t.segments
    short = enc("Up", ["Old one", "Newest three"])  # fits: history kept
    assert tok.decode([i for i in short if i >= 0]).count("Newest three") == 1
    with pytest.raises(PumaError, match="positions"):
        SampleEncoder(tok, encode_template(tok, text, CLICK_ANSWERS, fixed - 1), 3)


# --------------------------------------------------------------------------- heads and tables


def test_rating_head_loss_is_the_papers_mix():
    torch.manual_seed(0)
    head = RatingHead(lam=0.2)
    logits, labels = torch.randn(8, 5), torch.tensor([1., 2, 3, 4, 5, 5, 3, 1])
    loss, pred = head.loss(logits, labels)
    expect = 0.8 * ((pred - labels) ** 2).mean() + 0.2 * torch.nn.functional.cross_entropy(logits, labels.long() - 1)
    torch.testing.assert_close(loss, expect)
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [32, 12, 1]


def test_click_head_yes_or_yes_minus_no():
    logits, labels = torch.tensor([[2.0, 1.0], [-1.0, 0.5]]), torch.tensor([1.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(ClickHead().loss(logits, labels)[0], bce(logits[:, 0], labels))
    torch.testing.assert_close(ClickHead(yes_minus_no=True).loss(logits, labels)[0],
                               bce(logits[:, 0] - logits[:, 1], labels))


def test_soft_prompt_table_init_and_shape():
    t1 = SoftPromptTable(100, 2, 16, generator=torch.Generator().manual_seed(1))
    t2 = SoftPromptTable(100, 2, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t1.weight, t2.weight)
    assert t1.weight.abs().max() <= 0.1 and t1.weight.std() > 0.05
    assert t1(torch.tensor([3, 7])).shape == (2, 2, 16)


def test_paper_adapter_has_88_1m_parameters():
    cfg = AdapterConfig(source_dim=2048, target_dim=3072, width=4096)
    n = sum(p.numel() for p in MigrationAdapter(cfg).parameters())
    assert n == adapter_param_count(cfg) == 88_128_512
    assert round(n / 1e6, 1) == 88.1


@pytest.mark.parametrize("rank", [8, 64])
def test_low_rank_adapter_matches_its_formula(rank):
    cfg = AdapterConfig(source_dim=96, target_dim=160, width=256, rank=rank)
    ds, dt, w, r = 96, 160, 256, rank
    lin = lambda a, b: a * r + r * b + b  # noqa: E731
    formula = (lin(ds, w) + lin(w, ds) + lin(ds, w) + lin(w, dt) + 2 * (lin(dt, w) + lin(w, dt))
               + 4 * ds + 4 * dt)
    assert sum(p.numel() for p in MigrationAdapter(cfg).parameters()) == adapter_param_count(cfg) == formula
    assert formula < adapter_param_count(AdapterConfig(96, 160, 256))


def test_adapter_maps_per_token_and_takes_concatenated_sources():
    adapter = MigrationAdapter(AdapterConfig(source_dim=64 + 48, target_dim=96, width=32)).eval()
    a, b = torch.randn(4, 2, 64), torch.randn(4, 2, 48)
    out = adapter(torch.cat([a, b], -1))
    assert out.shape == (4, 2, 96)
    torch.testing.assert_close(out[:, 1], adapter(torch.cat([a, b], -1)[:, 1]))


# --------------------------------------------------------------------------- metrics


def test_rating_sums_are_exact_over_batches():
    rng = np.random.default_rng(0)
    pred, label = rng.uniform(0, 6, 1000), rng.integers(1, 6, 1000).astype(float)
    sums = RatingSums()
    for lo in range(0, 1000, 37):  # uneven batches: a mean of batch RMSEs would be wrong
        sums.update(torch.tensor(pred[lo:lo + 37]), torch.tensor(label[lo:lo + 37]))
    m = sums.compute()
    assert m["rmse"] == pytest.approx(np.sqrt(((pred - label) ** 2).mean()))
    assert m["mae"] == pytest.approx(np.abs(pred - label).mean())
    assert m["accuracy"] == pytest.approx((np.clip(np.round(pred), 1, 5) == label).mean())


def test_auc_and_uauc_match_sklearn_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 20, 2000) / 20.0  # many ties
    labels = rng.random(2000) < 0.3
    users = rng.integers(0, 150, 2000)
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    per_user = [roc_auc_score(labels[users == u], scores[users == u]) for u in np.unique(users)
                if 0 < labels[users == u].sum() < (users == u).sum()]
    value, used, skipped = uauc(users, scores, labels)
    assert value == pytest.approx(np.mean(per_user)) and used == len(per_user)
    assert used + skipped == len(np.unique(users))


def test_per_user_sums_give_the_same_split_metrics_as_all_rows_at_once():
    """evaluate's distributed path: per-user rows (metrics.user_row) added up (split_metrics) equal
    the metrics over every finite row at once; rows of non-finite prompts are counted, not scored."""
    rng = np.random.default_rng(3)
    users = rng.integers(0, 60, 3000)
    finite = users % 17 != 0  # a few users' prompts are not finite
    loss = rng.random(3000)
    for task in ("rating", "click"):
        label = rng.integers(1, 6, 3000).astype(float) if task == "rating" else (rng.random(3000) < 0.3).astype(float)
        pred = rng.uniform(0, 6, 3000) if task == "rating" else rng.integers(0, 10, 3000) / 10.0  # ties
        rows = [{"user_id": str(u), **user_row(task, finite[users == u], pred[users == u], label[users == u],
                                               loss[users == u])} for u in np.unique(users)]
        folded = UserTotals(task, worst=3)
        for lo in (0, 25):  # the per-user rows arrive in batches
            chunk = rows[lo:lo + 25] if lo == 0 else rows[lo:]
            folded.add({k: np.array([r[k] for r in chunk]) for k in chunk[0]})
        sums = {k: sum(r[k] for r in rows) for k in USER_SUMS[task]}
        assert folded.sums == pytest.approx(sums)
        got = folded.metrics()
        assert got == pytest.approx(split_metrics(task, sums) | {"users": len(np.unique(users[finite])),
                                                                 "quarantined_rows_skipped": (~finite).sum()})
        assert folded.bad == {str(u) for u in np.unique(users[~finite])}
        by_loss = sorted((r for r in rows if r["n"]), key=lambda r: -r["loss"])[:3]
        assert folded.worst["user_id"].tolist() == [r["user_id"] for r in by_loss]
        assert sums["n_bad"] == (~finite).sum() and got["n"] == finite.sum()
        assert got["loss"] == pytest.approx(loss[finite].mean())
        if task == "rating":
            want = RatingSums()
            want.update(torch.tensor(pred[finite]), torch.tensor(label[finite]))
            for k, v in want.compute().items():
                assert got[k] == pytest.approx(v)
        else:
            value, used, skipped = uauc(users[finite], pred[finite], label[finite])
            assert (got["uauc"], got["uauc_users"], got["uauc_users_skipped"]) == (pytest.approx(value), used, skipped)


def test_auc_from_sorted_score_runs_in_batches_equals_auc_with_ties():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 50, 5000) / 50.0
    labels = rng.random(5000) < 0.2
    values, inverse = np.unique(scores, return_inverse=True)  # ascending distinct scores
    positives, counts = np.bincount(inverse, weights=labels), np.bincount(inverse)
    folded = SortedAUC()
    for lo in range(0, len(values), 7):  # batches split the runs anywhere
        folded.add(positives[lo:lo + 7], counts[lo:lo + 7])
    assert folded.value() == pytest.approx(auc(scores, labels)) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(SortedAUC().value())


def _distributed_worker(rank: int, world: int, store: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    rng = np.random.default_rng(2)
    pred, label = rng.uniform(0, 6, 300), rng.integers(1, 6, 300).astype(float)
    users, scores, clicks = rng.integers(0, 20, 300), rng.random(300), (rng.random(300) < 0.4).astype(float)
    part = slice(rank * 170, None if rank else 170)  # uneven shards
    sums = RatingSums()
    sums.update(torch.tensor(pred[part]), torch.tensor(label[part]))
    click = ClickScores()
    click.update(users[part], torch.tensor(scores[part]), torch.tensor(clicks[part]))
    queue.put((rank, sums.all_reduce().compute(), click.compute()))
    dist.destroy_process_group()


def test_metrics_all_reduce_across_real_workers(tmp_path):
    import torch.multiprocessing as mp

    store = tmp_path / "store"  # a file store: no port to pick free and lose to another process
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_distributed_worker, args=(r, 2, str(store), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    rng = np.random.default_rng(2)
    pred, label = rng.uniform(0, 6, 300), rng.integers(1, 6, 300).astype(float)
    users, scores, clicks = rng.integers(0, 20, 300), rng.random(300), (rng.random(300) < 0.4).astype(float)
    for _, rating, click in results:
        assert rating["n"] == 300 and rating["rmse"] == pytest.approx(np.sqrt(((pred - label) ** 2).mean()))
        assert click["auc"] == pytest.approx(roc_auc_score(clicks, scores))
        assert click["uauc"] == pytest.approx(uauc(users, scores, clicks)[0])


def test_prompt_table_updates_only_the_rows_of_a_batch_like_a_lazy_adam_reference():
    """SparseAdam semantics (lazy Adam), checked against a dense hand-written reference: only the rows in
    a batch get moment and weight updates; bias correction follows the table's global step count."""
    torch.manual_seed(0)
    table = SoftPromptTable(50, 1, 8, generator=torch.Generator().manual_seed(3))
    ref_w = table.weight.detach().clone()
    m, v = torch.zeros_like(ref_w), torch.zeros_like(ref_w)
    opt = sparse_adam(table, lr=0.01)
    target = torch.randn(50, 8)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.01
    for step in range(1, 6):
        rows = torch.tensor([1, 7, 7, 20 + step])  # a repeated row and one new row per step
        loss = ((table(rows).squeeze(1) - target[rows]) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        assert table.weight.grad.is_sparse
        opt.step()
        # the reference: the same loss's gradient, summed per row, applied to those rows only
        w = ref_w.clone().requires_grad_(True)
        ((w[rows] - target[rows]) ** 2).sum().backward()
        touched = rows.unique()
        g = w.grad[touched]
        m[touched] = b1 * m[touched] + (1 - b1) * g
        v[touched] = b2 * v[touched] + (1 - b2) * g * g
        ref_w[touched] -= lr * (m[touched] / (1 - b1 ** step)) / ((v[touched] / (1 - b2 ** step)).sqrt() + eps)
        torch.testing.assert_close(table.weight.detach(), ref_w, rtol=1e-5, atol=1e-6)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[[1, 7, 21, 22, 23, 24, 25]] = False
    fresh = SoftPromptTable(50, 1, 8, generator=torch.Generator().manual_seed(3)).weight.detach()
    assert torch.equal(table.weight.detach()[untouched], fresh[untouched])  # never-seen rows never move


def test_epochs_are_raised_until_the_run_takes_min_steps():
    from puma_ray.train.common import epochs_for

    assert epochs_for(4, 200, 13) == 16  # 30 users x 27 rows on 2 ranks, batch 32: 13 steps an epoch
    assert epochs_for(4, 200, 60) == 4 and epochs_for(4, 0, 1) == 4


class _CountingLM:
    """Stands in for FrozenLM in step_logits: answer logits = the row index, and a count of LM calls."""

    class template:  # noqa: N801 - mimics FrozenLM.template
        prefix_ids = [0, 1]
        answer_ids = [5, 6]

    calls = 0

    def encode(self, titles, hist):
        from puma_ray.core.llm import Batch
        return Batch(ids=torch.zeros(len(titles), 3, dtype=torch.long), lengths=torch.full((len(titles),), 3))

    def answer_logits(self, soft, enc):
        self.calls += 1
        return soft.reshape(len(soft), -1)[:, :2].float()


class _Shard:
    def __init__(self, users):
        self.users = users

    def iter_batches(self, batch_size, **_):
        for i in range(0, len(self.users), batch_size):
            u = self.users[i:i + batch_size]
            yield {"user_id": np.array(u), "label": np.arange(i, i + len(u), dtype=np.float32),
                   "item_text": np.array(["t"] * len(u)), "history_text": [[] for _ in u]}


@pytest.mark.parametrize("rows", [7, 0])
def test_frozen_prompts_run_the_lm_once_and_later_epochs_reuse_every_row(rows):
    from puma_ray.train.epoch import FrozenLogits, step_logits

    users = [f"u{k}" for k in range(rows)]
    index = {u: k for k, u in enumerate(users)}
    lm, cache = _CountingLM(), FrozenLogits()
    soft = lambda r: r.float()[:, None, None].expand(-1, 1, 2)  # noqa: E731 - logits carry the row index
    config = SimpleNamespace(batch_size=3, shuffle_rows=12, train_steps=4, seed=1)  # 4 x 3 > 7 rows: some repeat
    first = list(step_logits(lm, soft, _Shard(users), index, config, 0, "cpu", cache))
    assert len(first) == 4 and lm.calls == 4 and cache.filled
    later = [list(step_logits(lm, soft, _Shard(users), index, config, e, "cpu", cache)) for e in (1, 2)]
    assert lm.calls == 4, "the LM ran again although nothing before the head trains"
    for epoch in later:
        assert len(epoch) == 4 and all(tokens == 0 for *_, tokens in epoch)
        if not rows:
            assert all(logits is None and labels is None for logits, labels, _ in epoch)
            continue
        seen = torch.cat([labels for _, labels, _ in epoch])
        assert sorted(seen[:rows].tolist()) == list(range(rows))  # one full permutation before any repeat
        # each kept row's logits stay paired with its own label
        assert all(torch.equal(logits[:, 0], labels) for logits, labels, _ in epoch)
    if rows:  # reshuffled every epoch
        assert [b[1].tolist() for b in later[0]] != [b[1].tolist() for b in later[1]]


def test_rows_are_tagged_with_the_part_their_rank_reads():
    import pandas as pd

    from puma_ray.train.common import owner, tag_parts

    users = [f"user{k}" for k in range(12)]
    batch = pd.DataFrame({"user_id": users * 3, "split": ["train"] * 12 + ["valid"] * 12 + ["test"] * 12,
                          "label": np.arange(36.0)})
    tagged = tag_parts(batch, world=3)
    assert "split" not in tagged and len(tagged) == 24  # test rows never reach a training stage
    assert tagged["part"].tolist() == [f"{s}_r{owner(u, 3)}" for s in ("train", "valid") for u in users]
    pooled = tag_parts(batch, world=3, train_part="train")  # the adapter: Ray Train splits train rows itself
    assert set(pooled["part"][:12]) == {"train"} and pooled["part"][12:].tolist() == tagged["part"][12:].tolist()


def test_a_long_epoch_logs_its_progress_on_rank_0(monkeypatch, capfd):
    from puma_ray.train import epoch

    monkeypatch.setattr(epoch, "PROGRESS_S", 0.0)  # every step is "long enough"
    # as in a fresh worker process: no handler yet (an earlier test's handler holds a stderr capture now closed)
    monkeypatch.setattr(epoch.log, "handlers", [])
    progress = epoch.EpochProgress(epoch=2, steps=5)
    progress.step(seen=32, loss_sum=64.0)
    err = capfd.readouterr().err
    assert "epoch 2: step 1/5" in err and "loss 2.0000" in err
    monkeypatch.setattr(epoch, "PROGRESS_S", 3600.0)  # a short epoch says nothing until its report
    progress.step(seen=64, loss_sum=64.0)
    assert "epoch 2" not in capfd.readouterr().err


def test_a_broadcast_store_finds_each_users_row_and_is_shared_read_only_through_ray(ray_local):
    import ray

    from puma_ray.core.scoring import BroadcastStore

    a = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.float32)), 2)
    table = pa.table({"user_id": ["u3", "u10", "ü1", "u2"], "prompt": a})
    b = BroadcastStore.from_table(table, 2)
    # users absent, ids longer than any stored one (never truncated into a stored id), prefixes, non-ASCII
    query = ["u2", "u10", "u100", "u", "ü1", "x", "u3", "u3"]
    np.testing.assert_array_equal(b.positions(query), [3, 1, -1, -1, 2, -1, 0, 0])
    np.testing.assert_array_equal(b.matrix[b.positions(["u10"])], [[2, 3]])
    assert b.positions([]).shape == (0,)
    empty = BroadcastStore.from_table(table.slice(0, 0), 2)
    np.testing.assert_array_equal(empty.positions(["u2"]), [-1])
    shared = ray.get(ray.put(b))  # how the scorers receive it: mapped from the object store, not copied
    assert not shared.matrix.flags.writeable and not shared.sorted_ids.flags.writeable
    np.testing.assert_array_equal(shared.positions(query), b.positions(query))


def test_prompt_matrix_reads_sliced_chunks_and_nulls_into_one_writable_matrix():
    from puma_ray.core.scoring import prompt_matrix

    a = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.float32)), 3)
    col = pa.chunked_array([a.slice(1, 2), pa.array([None, [9, 9, 9]], a.type), a.slice(0, 1)])
    m = prompt_matrix(col, 3)
    assert m.flags.writeable and m.dtype == np.float32
    np.testing.assert_array_equal(m, [[3, 4, 5], [6, 7, 8], [np.nan] * 3, [9, 9, 9], [0, 1, 2]])
    assert prompt_matrix(pa.array([], a.type), 3).shape == (0, 3)
