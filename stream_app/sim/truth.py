"""What is true about one (release, KPI) pair of a simulated world, graded by an oracle."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MAX_HORIZON = 4 * 3600.0  # the longest a release is watched alone (the judge's default horizon)
MIN_CHANGE = 0.02  # the bundled catalog's min_change
BIG = 0.05  # "drops of 5 % or more"
MIN_Z = 3.0  # oracle standard errors a visible drop needs
OVERLAP_SECONDS = 3600.0  # another release of the service this close: the pair overlaps
LOW_ORDERS = 2.0  # expected orders a minute below which a release lands on thin traffic

Direction = Literal["up", "down", "either"]


@dataclass(frozen=True, slots=True)
class Truth:
    """One (release, KPI) with its true effect and the oracle's view of it.

    Attributes:
        world: which generator made it ("shop" or "sim").
        seed: the world's seed.
        release_id: id of the Release event.
        service: released service.
        time: release time (POSIX seconds).
        kpi: KPI name of the catalog.
        direction: the KPI's good direction.
        effect: true relative effect of this release on the KPI (0.0 exactly when untouched).
        alone_end: end of the alone window A = [time, min(next release of the service,
            time + MAX_HORIZON)).
        se: oracle standard error of log(KPI over A) from the post window's own sampling noise
            (counts and the generator's over-dispersion, from the true expected rates; minutes
            without telemetry hold no information and are left out). inf when A holds nothing.
        overlaps: ids of the service's releases less than OVERLAP_SECONDS away (either side).
        surge: the release's windows ([time - 1 h, alone_end)) touch the Monday-morning surge.
        gap: a telemetry outage (minutes without any sample of the service) inside A.
        low_traffic: fewer than LOW_ORDERS expected orders a minute over A's first hour (minutes
            without any order are common, >= 1 in 8: a quiet night of the small service).
    """

    world: str
    seed: int
    release_id: str
    service: str
    time: float
    kpi: str
    direction: Direction
    effect: float
    alone_end: float
    se: float
    overlaps: tuple[str, ...] = ()
    surge: bool = False
    gap: bool = False
    low_traffic: bool = False

    @property
    def overlapping(self) -> bool:
        """Whether another release of the service is within an hour (expect `confounded`)."""
        return bool(self.overlaps)

    @property
    def bad_move(self) -> float:
        """The effect measured in the KPI's bad direction (positive: worse)."""
        if self.direction == "up":
            return -self.effect
        if self.direction == "down":
            return self.effect
        return abs(self.effect)

    @property
    def big_drop(self) -> bool:
        """A move of at least BIG in the KPI's bad direction."""
        return self.bad_move >= BIG - 1e-12

    @property
    def z(self) -> float:
        """|ln(1 + effect)| in oracle standard errors."""
        if self.effect == 0.0:
            return 0.0
        return abs(math.log1p(self.effect)) / self.se if self.se > 0 else math.inf

    @property
    def visible_drop(self) -> bool:
        """A big drop an oracle knowing the counterfactual could see in A (>= MIN_Z errors)."""
        return self.big_drop and self.z >= MIN_Z

    @property
    def neutral(self) -> bool:
        """Exactly untouched by this release."""
        return self.effect == 0.0

    @property
    def boundable(self) -> bool:
        """Untouched, and A's noise is small enough to bound the change within +-MIN_CHANGE."""
        return self.neutral and 1.96 * self.se < MIN_CHANGE
