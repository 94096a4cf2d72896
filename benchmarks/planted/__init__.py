"""A planted-defect benchmark: cases built by code with ground truth, split once into development and held-out.

Defect families (:data:`~benchmarks.planted.cases.VARIANTS`): label noise, shortcuts, a class not learned, a
class not read out, drowning experts (a class made rare in training), a lossy preprocessing step, a lossy step
that is not the cause, and healthy controls. Each is planted on scikit-learn's digits, coloured shapes drawn here
or the bundled synthetic fundus images, for a small CNN, ResNet or ViT trained on the CPU in seconds.

- :func:`~benchmarks.planted.cases.build_case` builds one case (a small one — ``steps=60, review_limit=200`` —
  in a second or two);
- :func:`~benchmarks.planted.measure.measure` runs Essence's triage and diagnosis on it through the public API;
- ``python -m benchmarks.planted --half dev ...`` runs a grid and prints the tables (docs/analyses.md,
  "Planted-defect benchmark").
"""

from benchmarks.planted.cases import SEEDS, SPLIT, VARIANTS, Case, Variant, build_case

__all__ = ["SEEDS", "SPLIT", "VARIANTS", "Case", "Variant", "build_case"]
