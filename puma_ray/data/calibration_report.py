"""calibration.md + calibration.png of a calibrated synthetic dataset: the real dataset's marginals next to the
generated one's (activity, users' label spread, item popularity, taste groups), and every parameter fitted on the
real data next to the same fit of the generated data (a round trip: how closely the generator reproduces what
it was fitted on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from puma_ray.data.calibrate import MIN_LABELS, Population, population_from_rows, read_rows

PARAMETERS = ("floor", "activity_shape", "activity_scale", "popularity_exponent", "label_base", "bias_std",
              "spread_log_mean", "spread_log_std", "quality_share", "taste_share")


def marginals(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Interactions per user, label std of users with >= MIN_LABELS labels, interactions per item (decreasing)."""
    per_user = rows.groupby("user_id")["label"].agg(["size", "std"])
    return {"activity": per_user["size"].to_numpy(),
            "spread": per_user.loc[per_user["size"] >= MIN_LABELS, "std"].to_numpy(),
            "popularity": np.sort(rows.groupby("item_id").size().to_numpy())[::-1]}


def plot(real: dict, synth: dict, pops: tuple[Population, Population], names: tuple[str, str], path: Path) -> None:
    fig = Figure(figsize=(12, 8.5))
    (a, b), (c, d) = fig.subplots(2, 2)
    for m, name, color in ((real, names[0], "#4c72b0"), (synth, names[1], "#dd8452")):
        bins = np.linspace(0, max(real["activity"].max(), synth["activity"].max()) + 1, 40)
        a.hist(m["activity"], bins=bins, density=True, alpha=0.55, color=color, label=name)
        b.hist(m["spread"], bins=np.linspace(0, 2.5, 40), density=True, alpha=0.55, color=color, label=name)
        c.loglog(np.arange(1, len(m["popularity"]) + 1), m["popularity"] / m["popularity"].sum(), color=color,
                 label=name)
    a.set(title="interactions per user", xlabel="interactions", ylabel="share of users")
    b.set(title=f"label std per user (users with >= {MIN_LABELS} labels)", xlabel="std", ylabel="share of users")
    c.set(title="item popularity", xlabel="item rank", ylabel="share of interactions")
    width = 0.4
    for k, (pop, name, color) in enumerate(zip(pops, names, ("#4c72b0", "#dd8452"))):
        d.bar(np.arange(len(pop.group_shares)) + (k - 0.5) * width, pop.group_shares, width, color=color, label=name)
    d.set(title="taste groups found (K-means, best silhouette)", xlabel="group (largest first)", ylabel="share of users")
    for ax in (a, b, c, d):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_calibration_report(real_dir: Path, out: Path, pop: Population, seed: int) -> Path:
    """calibration.md and calibration.png in `out` (the generated dataset, interactions written)."""
    real, synth = read_rows(real_dir), read_rows(out, need_manifest=False)
    refit = population_from_rows(synth, pop.fitted_from.get("cap", 0), seed, {})
    plot(marginals(real), marginals(synth), (pop, refit), ("real", "synthetic"), out / "calibration.png")
    lines = ["# Calibration", "", f"Synthetic users generated with parameters fitted on `{real_dir}` "
             f"({pop.fitted_from['users']} users, {pop.fitted_from['rows']} rows; dataset fingerprint "
             f"`{str(pop.fitted_from.get('fingerprint'))[:16]}`), and the same fit of the generated data "
             f"({refit.fitted_from['users']} users, {refit.fitted_from['rows']} rows). Only the real data's numbers "
             "enter the fit (see `puma_ray/data/calibrate.py` for each estimator).", "",
             "| parameter | fitted on the real data | fitted on the generated data |", "|---|---:|---:|"]
    lines += [f"| {k} | {getattr(pop, k):.4g} | {getattr(refit, k):.4g} |" for k in PARAMETERS]
    lines += [f"| taste groups | {len(pop.group_shares)} | {len(refit.group_shares)} |",
              f"| largest group share | {pop.group_shares[0]:.3f} | {refit.group_shares[0]:.3f} |",
              f"| best silhouette | {max(pop.fitted_from['silhouette_by_groups'].values()):.3f} | "
              f"{max(refit.fitted_from['silhouette_by_groups'].values()):.3f} |", "",
              "A best silhouette near 0 means the real users form no clear groups: the group count is then the "
              "K-means fit's best guess, not a structure of the data.", "", "![calibration](calibration.png)", ""]
    (out / "calibration.md").write_text("\n".join(lines))
    return out / "calibration.md"
