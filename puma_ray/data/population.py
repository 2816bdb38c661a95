"""The parameters of a calibrated synthetic population: fitted by `data/calibrate.py`, sampled by
`data/synthetic.py` (apart from both, so neither imports the other's caller)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Population:
    """Parameters of a calibrated synthetic population (see the module docstring)."""

    floor: int
    """Fewest interactions a user has."""
    activity_shape: float
    """Lomax shape of interactions above the floor (smaller: heavier tail)."""
    activity_scale: float
    """Lomax scale of interactions above the floor."""
    popularity_exponent: float
    """Item weight = (popularity rank + 10)^-exponent."""
    label_levels: list[float]
    """Labels a rating can take (snapped to the nearest)."""
    label_base: float
    """Mean of users' mean labels."""
    bias_std: float
    """Spread of users' mean labels."""
    spread_log_mean: float
    """Mean of log(user's label std)."""
    spread_log_std: float
    """Std of log(user's label std)."""
    quality_share: float
    """Share of a user's label variance that is the items' quality (shared by every user)."""
    taste_share: float
    """Share of a user's label variance explained by their taste group's item preferences."""
    group_shares: list[float]
    """Taste group sizes as shares of users, largest first."""
    items: int
    """Items in the calibrated catalogue (the dataset's)."""
    fitted_from: dict = field(default_factory=dict)
    """Where the parameters come from: dataset directory, fingerprint, users, rows, silhouettes."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @staticmethod
    def load(path: Path) -> "Population":
        return Population(**json.loads(Path(path).read_text()))
