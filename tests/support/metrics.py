"""How much a Prometheus metric of this process moved during a test (metrics are process-wide
counters, so tests compare before and after rather than absolute values)."""

from __future__ import annotations

from prometheus_client import REGISTRY


class Counts:
    """The summed samples of ``name`` whose labels include ``labels``, as they were when made;
    ``moved(**more)`` is how much those (narrowed by ``more``) grew since."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name = name
        self.labels = labels
        self._before = {key: value for key, value in self._samples().items()}

    def _samples(self) -> dict[tuple[tuple[str, str], ...], float]:
        found: dict[tuple[tuple[str, str], ...], float] = {}
        for family in REGISTRY.collect():
            for sample in family.samples:
                if sample.name == self.name and self.labels.items() <= sample.labels.items():
                    found[tuple(sorted(sample.labels.items()))] = sample.value
        return found

    def moved(self, **more: str) -> float:
        now = self._samples()
        return sum(
            value - self._before.get(key, 0.0)
            for key, value in now.items()
            if more.items() <= dict(key).items()
        )
