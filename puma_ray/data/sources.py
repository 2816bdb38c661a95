"""Raw data sources: a registry of plug-ins, one per original format.

A line source says which files hold its interactions (one record per line), how
to read its item titles (small: one entry per item, read on the driver) and how to
turn one line into a canonical row or a drop reason. The pipeline streams the
lines through Ray Data; a malformed line becomes a counted drop, never a crash.
Adding a source = one class here + one row in the tests' source table.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from puma_ray.errors import PumaError

Row = dict[str, Any]


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a plain or gzip text file."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors="replace")
    return open(path, encoding=encoding, errors="replace")


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise PumaError(f"{what} not found: {path}")
    return path


class Titles(dict):
    """item_id -> title, and how many lines of the title file(s) gave none (malformed, or no id or title)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0

    def take(self, item, title) -> None:
        """Record one line's (id, title), or count it as skipped when either is missing."""
        if item and title:
            self[str(item)] = str(title)
        else:
            self.skipped += 1


def _delimited_titles(path: Path, sep: str, title_col: int, encoding: str = "utf-8") -> Titles:
    """id (first column) -> title (column `title_col`) of a delimited text file."""
    titles = Titles()
    with open(path, encoding=encoding) as fh:
        for line in fh:
            if line.strip():
                parts = line.rstrip("\n").split(sep)
                titles.take(parts[0], parts[title_col] if len(parts) > title_col else None)
    return titles


def _csv_titles(path: Path, id_key: str, title_key: str) -> Titles:
    """id -> title of a CSV file with a header row."""
    titles = Titles()
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            titles.take(row.get(id_key), row.get(title_key))
    return titles


def _json_titles(paths: list[Path], id_keys: tuple[str, ...], title_key: str) -> Titles:
    """id -> title from json-lines files; the first of `id_keys` present is the id."""
    titles = Titles()
    for path in paths:
        with open_text(path) as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    rec = None
                if not isinstance(rec, dict):
                    titles.skipped += 1
                    continue
                titles.take(next((rec[k] for k in id_keys if rec.get(k)), None), rec.get(title_key))
    return titles


def _rating(value: Any, low: float = 1.0) -> float | str:
    """A rating in [low, 5], or the drop reason for a value that is not one."""
    try:
        r = float(value)
    except (TypeError, ValueError):
        return "malformed_label"
    if not math.isfinite(r) or r < low or r > 5:
        return "label_out_of_range"
    return r


def _timestamp(value: Any, per_second: int = 1) -> int | str:
    """Epoch seconds from a number (or numeric string) in 1/per_second units; 0 when absent; else a drop reason."""
    if value in (None, ""):
        return 0
    try:
        ts = float(value)
    except (TypeError, ValueError):
        return "malformed_timestamp"
    return int(ts) // per_second if math.isfinite(ts) else "malformed_timestamp"


def _row(user: Any, item: Any, label: Any, ts: int, text: str | None = None,
         history: list[str] | None = None) -> Row | str:
    if user in (None, "") or item in (None, ""):
        return "missing_user_or_item"
    if isinstance(label, str):
        return label
    return {"user_id": str(user), "item_id": str(item), "label": float(label), "ts": int(ts),
            "item_text": text, "history_text": history or []}


@dataclass
class LineSource:
    """Base of the line-oriented sources: subclasses fill in the four hooks."""

    name: str = ""
    task: str = "rating"
    encoding: str = "utf-8"

    @classmethod
    def from_config(cls, cfg) -> "LineSource":
        """The source configured from a DataConfig (most sources take no options)."""
        return cls()

    def files(self, input_path: Path) -> list[Path]:
        """The files whose lines are interactions."""
        raise NotImplementedError

    def titles(self, input_path: Path) -> tuple[Titles, str]:
        """item_id -> title (with its count of skipped lines), and a one-line note on where item texts come from."""
        return Titles(), "item id (no titles)"

    def parse(self, line: str, titles: dict[str, str], seed: int) -> list[Row | str]:
        """Canonical rows (or drop reasons) from one line; a header line returns []."""
        raise NotImplementedError


class MovieLens(LineSource):
    """MovieLens 100k (u.data + u.item, latin-1) or "latest" (ratings.csv + movies.csv).

    Half-star ratings of the latest format map to 1..5 by rounding up (ceil):
    0.5 -> 1, 1.5 -> 2, ..., 4.5 -> 5; whole stars are unchanged.
    """

    def __init__(self) -> None:
        super().__init__(name="movielens", task="rating", encoding="latin-1")

    def _latest(self, input_path: Path) -> bool:
        if (input_path / "u.data").exists():
            return False
        if (input_path / "ratings.csv").exists():
            return True
        raise PumaError(f"movielens: {input_path} holds neither u.data (100k format) nor ratings.csv (latest format)")

    def files(self, input_path: Path) -> list[Path]:
        return [input_path / ("ratings.csv" if self._latest(input_path) else "u.data")]

    def titles(self, input_path: Path) -> tuple[Titles, str]:
        if self._latest(input_path):
            return _csv_titles(_need(input_path / "movies.csv", "movielens movies.csv"), "movieId", "title"), \
                "movies.csv title"
        return _delimited_titles(_need(input_path / "u.item", "movielens u.item"), "|", 1, "latin-1"), "u.item title"

    def parse(self, line: str, titles: dict[str, str], seed: int) -> list[Row | str]:
        if line.startswith("userId,") or not line.strip():
            return []
        parts = line.split(",") if "," in line else line.split("\t")
        if len(parts) < 4:
            return ["malformed_line"]
        user, item, rating, ts = parts[:4]
        label = _rating(rating, low=0.5)  # half stars (0.5-5.0 since 2003) round up: 0.5 -> 1, 4.5 -> 5
        if not isinstance(label, str):
            label = float(math.ceil(label))
        ts_int = _timestamp(ts)
        if isinstance(ts_int, str):
            return [ts_int]
        return [_row(user, item, label, ts_int, titles.get(item))]


class Amazon(LineSource):
    """Amazon Reviews, 2023 jsonl (user_id, parent_asin, rating, timestamp ms) or 2018 json
    (reviewerID, asin, overall, unixReviewTime s); format detected per record from its fields.
    Titles from meta_*.json[l][.gz] when present, else the review summary/title, else the item id."""

    def __init__(self) -> None:
        super().__init__(name="amazon", task="rating")

    @staticmethod
    def _split(input_path: Path) -> tuple[list[Path], list[Path]]:
        files = [input_path] if input_path.is_file() else sorted(
            p for p in _need(input_path, "amazon input").iterdir() if ".json" in p.name)
        meta = [p for p in files if p.name.startswith("meta_")]
        reviews = [p for p in files if p not in meta]
        if not reviews:
            raise PumaError(f"amazon: no review file (*.json, *.jsonl, optionally .gz) in {input_path}")
        return reviews, meta

    def files(self, input_path: Path) -> list[Path]:
        return self._split(input_path)[0]

    def titles(self, input_path: Path) -> tuple[Titles, str]:
        titles = _json_titles(self._split(input_path)[1], ("parent_asin", "asin"), "title")
        if titles:
            return titles, "meta title"
        return Titles(), "review summary/title (no meta file: item titles unavailable), else item id"

    def parse(self, line: str, titles: dict[str, str], seed: int) -> list[Row | str]:
        if not line.strip():
            return []
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            return ["malformed_line"]
        if not isinstance(rec, dict):
            return ["malformed_line"]
        if "reviewerID" in rec or "overall" in rec:  # 2018 format
            user, item, rating, ts, summary = (rec.get("reviewerID"), rec.get("asin"), rec.get("overall"),
                                               rec.get("unixReviewTime"), rec.get("summary"))
        elif "parent_asin" in rec or "rating" in rec:  # 2023 format, timestamps in ms
            ts_ms = rec.get("timestamp")
            user, item, rating, summary = rec.get("user_id"), rec.get("parent_asin") or rec.get("asin"), \
                rec.get("rating"), rec.get("title")
            ts = _timestamp(ts_ms, per_second=1000)
        else:
            return ["unknown_record_format"]
        ts = _timestamp(ts) if not isinstance(ts, int) else ts
        if isinstance(ts, str):
            return [ts]
        text = titles.get(str(item)) if titles else (summary or None)
        return [_row(user, item, _rating(rating), ts, text)]


class Yelp(LineSource):
    """Yelp Open Dataset: review json lines + business json lines (`name` is the item text)."""

    def __init__(self) -> None:
        super().__init__(name="yelp", task="rating")

    @staticmethod
    def _find(input_path: Path, word: str) -> Path:
        found = sorted(p for p in _need(input_path, "yelp input").iterdir() if word in p.name and ".json" in p.name)
        if not found:
            raise PumaError(f"yelp: no *{word}*.json file in {input_path}")
        return found[0]

    def files(self, input_path: Path) -> list[Path]:
        return [self._find(input_path, "review")]

    def titles(self, input_path: Path) -> tuple[Titles, str]:
        return _json_titles([self._find(input_path, "business")], ("business_id",), "name"), "business name"

    def parse(self, line: str, titles: dict[str, str], seed: int) -> list[Row | str]:
        if not line.strip():
            return []
        try:
            rec = json.loads(line)
            ts = int(datetime.strptime(rec["date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return ["malformed_line"]
        item = rec.get("business_id")
        return [_row(rec.get("user_id"), item, _rating(rec.get("stars")), ts, titles.get(str(item)))]


class Mind(LineSource):
    """MIND: behaviors.tsv impressions exploded to (user, news, click) rows; news.tsv titles.

    history_text = titles of up to `history_len` titled history items, a sample seeded by
    (seed, impression id). News ids without a title are handled by the pipeline's
    missing_title option and counted in the manifest.
    """

    history_len: int = 5

    def __init__(self, history_len: int = 5) -> None:
        super().__init__(name="mind", task="click")
        self.history_len = history_len

    @classmethod
    def from_config(cls, cfg) -> "Mind":
        return cls(history_len=cfg.history_len)

    def files(self, input_path: Path) -> list[Path]:
        return [_need(input_path / "behaviors.tsv", "mind behaviors.tsv")]

    def titles(self, input_path: Path) -> tuple[Titles, str]:
        return _delimited_titles(_need(input_path / "news.tsv", "mind news.tsv"), "\t", 3), "news.tsv title"

    def parse(self, line: str, titles: dict[str, str], seed: int) -> list[Row | str]:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 5:
            return [] if not line.strip() else ["malformed_line"]
        imp_id, user, when, history, impressions = parts
        try:
            ts = int(datetime.strptime(when, "%m/%d/%Y %I:%M:%S %p").replace(tzinfo=timezone.utc).timestamp())
            rng = np.random.default_rng([seed, int(imp_id)])
        except ValueError:
            return ["malformed_line"]
        titled = [titles[h] for h in history.split() if h in titles]
        if len(titled) > self.history_len:
            titled = [titled[i] for i in sorted(rng.choice(len(titled), self.history_len, replace=False))]
        rows: list[Row | str] = []
        for token in impressions.split():
            news, _, click = token.rpartition("-")
            if click not in ("0", "1") or not news:
                rows.append("malformed_impression")
                continue
            rows.append(_row(user, news, float(click), ts, titles.get(news), titled))
        return rows


SOURCES: dict[str, type[LineSource]] = {
    "movielens": MovieLens,
    "amazon": Amazon,
    "yelp": Yelp,
    "mind": Mind,
}


def make_source(cfg) -> LineSource:
    """The registered line source named by `cfg.source` (synthetic is generated, see synthetic.py)."""
    if cfg.source not in SOURCES:
        raise PumaError(f"unknown source {cfg.source!r}; registered: {', '.join(sorted(SOURCES))}, synthetic")
    return SOURCES[cfg.source].from_config(cfg)

