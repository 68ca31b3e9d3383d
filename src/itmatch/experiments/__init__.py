"""Experiment runners built on the library and the trainer: the demo and multi-seed comparisons.

Not library code: these modules train (they import :mod:`itmatch.training`), and nothing in the
library imports them. The CLI's ``demo`` and ``compare`` commands call into them.

* :mod:`~itmatch.experiments.demo`: ``itmatch demo`` end to end (:func:`~itmatch.experiments.demo.run_demo`);
  its models and plans (:mod:`~itmatch.experiments.demo_models`), report folder
  (:mod:`~itmatch.experiments.demo_report`) and pictures (:mod:`~itmatch.experiments.figures`).
* :mod:`~itmatch.experiments.compare`: ``itmatch compare``, recipes x seeds -> mean ± std.
* :mod:`~itmatch.experiments.tables`: the results table both write; :mod:`~itmatch.experiments.chance`:
  what a random ranking scores.
"""
