"""Prompt templates with soft-prompt splicing, and answer tokens resolved per tokenizer.

A template is text with `<UserID>` (replaced by the user's l soft-prompt vectors),
`<ItemTitle>` and optionally `<ItemTitleList>` (history titles joined by ", ").
Text segments are tokenized separately and their embeddings spliced around the soft
vectors, so no placeholder token is added to the vocabulary. Special tokens are read
from the tokenizer itself: whatever it puts before a text (bos or nothing) starts
every sequence; what it would append (eos) is left out, since the answer follows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from puma_ray.errors import PumaError

USER, TITLE, HISTORY = "<UserID>", "<ItemTitle>", "<ItemTitleList>"
_PLACEHOLDER = re.compile(f"({USER}|{TITLE}|{HISTORY})")
RATING_ANSWERS = ("1", "2", "3", "4", "5")
CLICK_ANSWERS = ("Yes", "No")


def load_template_text(name_or_path: str) -> str:
    """A shipped template by name (rating_amazon, rating_yelp, click_mind) or a text file."""
    shipped = resources.files("puma_ray.core") / "templates" / f"{name_or_path}.txt"
    if shipped.is_file():
        return shipped.read_text()
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text()
    names = sorted(p.name[:-4] for p in (resources.files("puma_ray.core") / "templates").iterdir() if p.name.endswith(".txt"))
    raise PumaError(f"template {name_or_path!r} is neither a shipped template ({', '.join(names)}) nor a file")


def split_template(text: str) -> list[str]:
    """Alternating [text, placeholder, text, ...]; checks the placeholders a template may have."""
    parts = _PLACEHOLDER.split(text)
    found = parts[1::2]
    for ph, lo, hi in ((USER, 1, 1), (TITLE, 1, 1), (HISTORY, 0, 1)):
        if not lo <= found.count(ph) <= hi:
            raise PumaError(f"template must contain {ph} {'exactly once' if lo == hi else 'at most once'}; "
                            f"found {found.count(ph)} in {text!r}")
    return parts


def special_prefix_ids(tokenizer) -> list[int]:
    """Token ids the tokenizer puts before any text (e.g. [bos]), read by encoding a probe."""
    probe = "x"
    plain = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe, add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    raise PumaError(f"cannot locate the text inside the tokenizer's special tokens for {type(tokenizer).__name__}")


def resolve_answers(tokenizer, tail: str, answers: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """(ids of the template's last text segment, one token id per answer) as the model would generate them.

    Tries, in order: the answer with a leading space right after the tail (" 4" after
    "#Answer:"), the tail ending in a space then the bare answer (tokenizers that split
    the space off digits), and the bare answer right after the tail. The first spelling
    that makes every answer exactly one new token wins; none -> a clear error.
    """
    tried = []
    for extra, lead in (("", " "), (" ", ""), ("", "")):
        base = tokenizer.encode(tail + extra, add_special_tokens=False)
        ids = []
        for answer in answers:
            full = tokenizer.encode(tail + extra + lead + answer, add_special_tokens=False)
            if full[:len(base)] != base or len(full) != len(base) + 1:
                tried.append(f"{(extra + lead + answer)!r} -> {tokenizer.convert_ids_to_tokens(full[len(base):])}")
                break
            ids.append(full[-1])
        else:
            if len(set(ids)) == len(ids):
                return base, ids
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise PumaError(f"tokenizer {name}: an answer is not a single token after the template ({'; '.join(tried)}); "
                    "use a template whose answer position yields one token per answer")


@dataclass
class EncodedTemplate:
    """A template tokenized for one tokenizer: constant prefix ids, segments, answer ids."""

    prefix_ids: list[int]
    """Special prefix + text before the first placeholder: identical for every sample."""
    segments: list[str | list[int]]
    """After the prefix: placeholders (str) and token ids of the text between them."""
    answer_ids: list[int]
    """One vocabulary id per answer, in the order of the answers given."""
    max_length: int
    """Longest sequence the model accepts."""


def encode_template(tokenizer, text: str, answers: tuple[str, ...], max_length: int) -> EncodedTemplate:
    """Tokenize a template's text segments for `tokenizer` and resolve its answer tokens."""
    parts = split_template(text)
    tail_ids, answer_ids = resolve_answers(tokenizer, parts[-1], answers)
    enc = [tokenizer.encode(t, add_special_tokens=False) if i % 2 == 0 else t for i, t in enumerate(parts)]
    enc[-1] = tail_ids
    return EncodedTemplate(prefix_ids=special_prefix_ids(tokenizer) + enc[0], segments=enc[1:],
                           answer_ids=answer_ids, max_length=max_length)


class SampleEncoder:
    """Token ids of one sample's variable part, with truncation that never cuts the soft prompt.

    Returns (ids, soft): ids has -1 where the l soft vectors go. When the sequence would
    exceed max_length, history titles are dropped first (oldest first), then the item
    title is cut from its end; if the constant parts alone do not fit, it fails clearly.
    """

    def __init__(self, tokenizer, template: EncodedTemplate, prompt_len: int) -> None:
        self.tok, self.t, self.l = tokenizer, template, prompt_len
        self.fixed = len(template.prefix_ids) + prompt_len + sum(len(s) for s in template.segments if isinstance(s, list))
        if self.fixed >= template.max_length:
            raise PumaError(f"template + {prompt_len} soft tokens need {self.fixed} positions; the model allows "
                            f"{template.max_length}")
        # item titles repeat across users: tokenize each once
        self._ids = lru_cache(maxsize=200_000)(lambda text: tuple(tokenizer.encode(text, add_special_tokens=False)))

    def __call__(self, title: str, history: list[str] | tuple[str, ...] = ()) -> list[int]:
        budget = self.t.max_length - self.fixed
        title_ids = list(self._ids(title))
        history = list(history)
        hist_ids = list(self._ids(", ".join(history))) if history else []
        if HISTORY in self.t.segments:
            while history and len(title_ids) + len(hist_ids) > budget:
                history = history[1:]
                hist_ids = list(self._ids(", ".join(history))) if history else []
        title_ids = title_ids[:max(budget - len(hist_ids), 0)]
        out: list[int] = []
        for seg in self.t.segments:
            if seg == USER:
                out += [-1] * self.l
            elif seg == TITLE:
                out += title_ids
            elif seg == HISTORY:
                out += hist_ids
            else:
                out += seg
        return out
