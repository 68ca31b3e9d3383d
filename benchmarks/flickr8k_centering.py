"""What the modality gap means for ranking, measured: recall and separability of trained models'
Flickr8k dev embeddings as they are and with each modality centred (its mean subtracted,
renormalised: itmatch.evaluation.centering, `itmatch evaluate --center`).

    .venv/bin/python benchmarks/flickr8k_centering.py RUN [RUN ...] [--data DIR]

RUN: run folders (e.g. those of benchmarks/flickr8k_baseline.py in /tmp/itmatch-f8k-baseline).
Writes benchmarks/results/flickr8k_centering.json: per run, dev recall (all 1,000 images),
probe accuracy, centroid distance and MMD before and after centring, and the change.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flickr8k_baseline import DEFAULT_DATA, dev_scores

from _common import write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    import torch

    from itmatch.data import load_corpus
    from itmatch.evaluation.centering import center_modalities
    from itmatch.inference import Matcher

    torch.set_num_threads(1)
    dev = load_corpus("flickr8k", str(args.data), "dev")
    results = {}
    for run in args.runs:
        im, tx = Matcher.from_run(run, "best").embed_corpus(dev)
        raw = dev_scores(im, tx)
        centred = dev_scores(*center_modalities(im, tx))
        keys = [k for k in raw if isinstance(raw[k], (int, float)) and k in centred]
        results[run.name] = {"run": str(run), "raw": raw, "centred": centred,
                             "change": {k: centred[k] - raw[k] for k in keys}}  # fmt: skip
        print(
            run.name,
            {
                k: round(results[run.name]["change"][k], 3)
                for k in ("rsum", "probe_acc", "centroid_dist", "mmd")
            },
        )
    write_result("flickr8k_centering", {"split": "dev", "protocol": "all (1,000 images)", "runs": results})


if __name__ == "__main__":
    main()
