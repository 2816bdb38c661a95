"""A frozen causal LM that scores answers for soft prompts: the fast path and the reference path.

Fast path (what training and evaluation use): the final hidden state at the answer
position only, projected onto the few answer rows of the output embedding, instead
of full-vocabulary logits at every position. The constant text before the first
placeholder is run through the frozen model once; its key/values are reused for
every batch (prefix cache). Sequences are right-padded inside the batch so that the
prefix sits at the same positions for every sample; position ids and attention
masks are built here, so the tokenizer's own padding side does not matter.

Shapes: soft prompts [B, l, d] (any float dtype, cast to the model's) ->
answer logits [B, A] float32, A = number of answers.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from puma_ray.core.templates import SampleEncoder, encode_template
from puma_ray.errors import PumaError


@dataclass
class Batch:
    """Token ids of a batch's variable part, right-padded."""

    ids: torch.Tensor
    """[B, T] int64; -1 marks soft-prompt slots, pad_id fills the tail."""
    lengths: torch.Tensor
    """[B] int64 real length of each row (answer position = length - 1)."""


def cache_keyword(decoder) -> str:
    """The keyword the decoder's forward takes a KV cache under: transformers 5.24 renamed
    `past_key_values` to `cache`; an older release would pass an unknown `cache=` on in its kwargs."""
    params = inspect.signature(decoder.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise PumaError(f"{type(decoder).__name__}.forward takes no KV cache (neither `cache` nor `past_key_values`): "
                    "run with prefix_cache off")


class FrozenLM(nn.Module):
    """Wraps any Hugging Face causal LM + tokenizer + template; no parameter of the LM trains."""

    def __init__(self, model, tokenizer, template_text: str, answers: tuple[str, ...], prompt_len: int = 1,
                 prefix_cache: bool = True, max_length: int | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.decoder = model.get_decoder()
        self.embed = model.get_input_embeddings()
        cfg = model.config
        self.hidden = cfg.hidden_size
        limit = max_length or getattr(cfg, "max_position_embeddings", None) or 2048
        self.template = encode_template(tokenizer, template_text, answers, limit)
        self.encoder = SampleEncoder(tokenizer, self.template, prompt_len)
        self.prompt_len = prompt_len
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        head = model.get_output_embeddings()
        if head is None:
            raise PumaError(f"{type(model).__name__} has no output embedding: not a causal LM")
        self.register_buffer("answer_ids", torch.tensor(self.template.answer_ids), persistent=False)
        # Facts that change how logits come out of the head, read from the config.
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.logit_scale = getattr(cfg, "logit_scale", None)
        self.use_prefix_cache = prefix_cache
        self.cache_arg = cache_keyword(self.decoder) if prefix_cache else None
        self._prefix_kv = None  # transformers Cache of the template prefix at batch size 1 (built on first use)

    # ----------------------------------------------------------------------- batching

    def encode(self, titles: list[str], histories: list[list[str]] | None = None) -> Batch:
        """Tokenize a batch's variable parts (titles and optional history lists)."""
        histories = histories or [[] for _ in titles]
        rows = [self.encoder(t, h) for t, h in zip(titles, histories)]
        lengths = torch.tensor([len(r) for r in rows])
        ids = torch.full((len(rows), int(lengths.max())), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return Batch(ids=ids, lengths=lengths)

    def _embed_rest(self, batch: Batch, soft: torch.Tensor) -> torch.Tensor:
        """[B, T, d] embeddings of the variable part with soft vectors spliced into the -1 slots."""
        device = self.embed.weight.device
        ids = batch.ids.to(device)
        slots = ids < 0
        emb = self.embed(ids.clamp(min=0))
        if soft.shape[1] != self.prompt_len or soft.shape[2] != self.hidden:
            raise PumaError(f"soft prompts have shape {tuple(soft.shape)}; this model needs [B, {self.prompt_len}, "
                            f"{self.hidden}]")
        return emb.masked_scatter(slots[..., None], soft.to(emb.dtype))

    def _prefix_embeds(self, batch_size: int) -> torch.Tensor:
        ids = torch.tensor([self.template.prefix_ids], device=self.embed.weight.device)
        return self.embed(ids).expand(batch_size, -1, -1)

    # ----------------------------------------------------------------------- forward paths

    def _prefix_cache(self, batch_size: int):
        """The template prefix's KV cache for a batch: computed once at batch size 1, then each batch gets a copy
        repeated along the batch (`copy.deepcopy` + `Cache.batch_repeat_interleave`, the public way
        transformers documents for re-using a prompt's cache; the forward extends the copy, never the original)."""
        if self._prefix_kv is None:
            with torch.no_grad():
                n = len(self.template.prefix_ids)
                out = self.decoder(inputs_embeds=self._prefix_embeds(1), use_cache=True,
                                   position_ids=torch.arange(n, device=self.embed.weight.device)[None])
            self._prefix_kv = getattr(out, "cache", None) or out.past_key_values
        cache = copy.deepcopy(self._prefix_kv)
        cache.batch_repeat_interleave(batch_size)
        return cache

    def hidden_at_answer(self, soft: torch.Tensor, batch: Batch) -> torch.Tensor:
        """[B, d] final hidden state (after the final norm) at each sample's answer position."""
        rest = self._embed_rest(batch, soft)
        B, T, _ = rest.shape
        P = len(self.template.prefix_ids)
        device = rest.device
        mask = torch.cat([torch.ones(B, P, dtype=torch.long, device=device),
                          (torch.arange(T, device=device)[None] < batch.lengths.to(device)[:, None]).long()], 1)
        if self.use_prefix_cache:
            out = self.decoder(inputs_embeds=rest, attention_mask=mask, use_cache=True,
                               position_ids=torch.arange(P, P + T, device=device)[None].expand(B, -1),
                               **{self.cache_arg: self._prefix_cache(B)})
            hidden = out.last_hidden_state
            index = batch.lengths.to(device) - 1
        else:
            embeds = torch.cat([self._prefix_embeds(B), rest], 1)
            hidden = self.decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                                  position_ids=torch.arange(P + T, device=device)[None].expand(B, -1)).last_hidden_state
            index = batch.lengths.to(device) - 1 + P
        return hidden[torch.arange(B, device=device), index]

    def answer_logits(self, soft: torch.Tensor, batch: Batch) -> torch.Tensor:
        """[B, A] float32 logits of the answer tokens at the answer position (the fast path)."""
        h = self.hidden_at_answer(soft, batch)
        head = self.model.get_output_embeddings()
        logits = h @ head.weight[self.answer_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[self.answer_ids]
        return self._postprocess(logits).float()

    def _postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def reference_logits(self, soft: torch.Tensor, batch: Batch, append_answer: bool = True) -> torch.Tensor:
        """[B, A] the same logits the way the reference code gets them: the whole sequence (plus an
        appended answer token) through the full model, full-vocabulary logits at every position."""
        rest = self._embed_rest(batch, soft)
        B, T, _ = rest.shape
        device = rest.device
        P = len(self.template.prefix_ids)
        embeds = torch.cat([self._prefix_embeds(B), rest], 1)
        lengths = batch.lengths.to(device) + P
        if append_answer:  # the reference appends the target answer token after the prompt
            ans = self.embed(self.answer_ids[:1].to(device)).expand(B, 1, -1)
            embeds = torch.cat([embeds, ans], 1)
            embeds = embeds.clone()
            embeds[torch.arange(B, device=device), lengths] = ans[:, 0]
        L = embeds.shape[1]
        mask = (torch.arange(L, device=device)[None] < (lengths + int(append_answer))[:, None]).long()
        logits = self.model(inputs_embeds=embeds, attention_mask=mask,
                            position_ids=torch.arange(L, device=device)[None].expand(B, -1)).logits  # [B, L, V]
        return logits[torch.arange(B, device=device), lengths - 1][:, self.answer_ids].float()
