"""The packaged model (``itmatch-f8k``) re-scored from its shipped file, and search with it.

    .venv/bin/python benchmarks/pretrained_model.py [--data DIR] [--all-photos]  # score + time the shipped model
    .venv/bin/python benchmarks/pretrained_model.py --export RUN [RUN ...]      # replace it, then score + time

``--export`` picks, among the runs given, the one with the best validation rsum of its own
``summary.json`` (the held-out training images the run selected its checkpoint on; never dev),
exports its best checkpoint in float16 into ``src/itmatch/pretrained/itmatch-f8k`` (replacing
the model there) and goes on as without it. Then, all with the model loaded from the package
folder (``Matcher.from_pretrained("itmatch-f8k")``), one thread:

1. Flickr8k dev, protocol all (1,000 images, 5,000 captions): R@1/5/10 both ways, rsum, and the
   modality probe; the source run's own float32 checkpoint is scored too when it is still on
   this machine, to show what float16 costs. The figures go to the model's ``card.json``.
2. An index of the 1,000 dev photos built cold (photos only, timed), and the failure examples of
   docs/models.md: queries against it, each result shown with the photo's first reference
   caption, which says what it shows.
3. Text-query (300 dev captions) and photo-query (50) latency, end to end, p50/p99, over that
   index, or with --all-photos over a cold index of all 7,000 Flickr8k photos (also timed).

Writes benchmarks/results/pretrained_model.json and the model's card.json. The dev photos'
features are computed here from the photos with the installed image backbone (whose digest
the model checks when it loads), not read from a feature cache.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import random
import shutil
import time
from pathlib import Path

import torch
from search_flickr8k import image_query_latency, percentiles, timed

from itmatch.data import load_corpus
from itmatch.evaluation.invariance import invariance_metrics
from itmatch.evaluation.recall import evaluate_embeddings
from itmatch.fileio import atomic_write_text
from itmatch.inference import Matcher
from itmatch.memory import retain_freed_memory
from itmatch.pretrained import CARD, installed_models, read_manifest
from itmatch.retrieval import PhotoIndex, SearchEngine, build_index

from _common import REPO_ROOT, load_average, peak_rss_mb, write_result

NAME = "itmatch-f8k"
PACKAGE_DIR = REPO_ROOT / "src" / "itmatch" / "pretrained" / NAME
DATA = REPO_ROOT.parent / "shared" / "data" / "flickr8k"
WORK = Path("/tmp/itmatch-pretrained-bench")

# Queries for the card's "known limits": counting, colour binding, negation, relations, things
# Flickr8k rarely shows. Each names what a correct photo's reference captions must say: every
# group of words must match (a group: alternatives, whole words).
FAILURE_QUERIES: list[tuple[str, list[list[str]]]] = [
    ("three dogs running on grass", [["three"], ["dog", "dogs"]]),
    ("a black dog chasing a white dog", [["black"], ["white"], ["dog", "dogs"]]),
    ("a street with no people", [["empty", "no one", "nobody", "deserted"]]),
    ("a man standing under a bridge", [["bridge"]]),
    ("a cat sleeping on a sofa", [["cat", "cats", "kitten"]]),
    ("a red car parked on the street", [["car", "cars"]]),
    ("a woman reading a book", [["book", "books", "reading", "reads"]]),
    ("a dog runs through the snow", [["dog", "dogs"], ["snow", "snowy"]]),
]


def says(captions: list[str], groups: list[list[str]]) -> bool:
    """True when one of the captions contains a word of every group (whole words)."""
    import re

    return any(all(re.search(r"\b(" + "|".join(map(re.escape, g)) + r")\b", c.lower()) for g in groups)
               for c in captions)  # fmt: skip


def pick_run(runs: list[Path]) -> tuple[Path, list[dict]]:
    """The run with the best validation rsum in its summary.json (its own model-selection set)."""
    rows = []
    for run in runs:
        if not (run / "summary.json").is_file():
            continue  # unfinished (or still training): it has no selected checkpoint yet
        summary = json.loads((run / "summary.json").read_text())
        rows.append({"run": str(run), "val_rsum": summary["best"]["val/rsum"], "stage": summary["best"].get("stage"),
                     "epoch_in_stage": summary["best"].get("epoch")})  # fmt: skip
    rows.sort(key=lambda r: -r["val_rsum"])
    return Path(rows[0]["run"]), rows


def dev_features(matcher: Matcher, data: Path) -> tuple[object, torch.Tensor]:
    """The dev corpus and its photos' backbone features, computed here from the photos (the
    model's own preprocessing and its installed image backbone, as ``embed_images`` does),
    once for every model scored on them."""
    from itmatch.features.backbones import get_backbone, require_weights

    corpus = load_corpus("flickr8k", str(data), "dev")
    data_cfg = matcher.config["data"]
    name = data_cfg["feature_backbone"]
    backbone = get_backbone(name, require_weights(name, data_cfg.get("feature_weights"), "data.feature_weights"))
    transform = matcher.image_transform()
    paths = [Path(corpus.image_root) / i for i in corpus.image_ids]
    out = []
    with torch.no_grad():
        for k in range(0, len(paths), 32):
            out.append(backbone(torch.stack([transform(p) for p in paths[k : k + 32]])))
    return corpus, torch.cat(out)


def dev_scores(matcher: Matcher, corpus: object, feats: torch.Tensor) -> dict[str, float]:
    im, tx = matcher.embed_features(feats), matcher.embed_texts(corpus.flat_captions())
    out = {k: v for k, v in evaluate_embeddings(im, tx, protocol="all").items() if not isinstance(v, list)}
    out.update(invariance_metrics(im, tx))
    return out


def timed_build(matcher: Matcher, images: Path, index_dir: Path, what: str) -> dict:
    t = time.perf_counter()
    built = build_index(matcher, images, index_dir, rebuild=True)
    seconds = time.perf_counter() - t
    print(f"index of {what}: {built.photos} photos in {seconds:.1f} s")
    return {"photos": what, "indexed": built.photos, "photos_embedded": built.embedded, "unreadable": built.unreadable,
            "seconds": round(seconds, 1), "photos_per_second": round(built.embedded / seconds, 2),
            "load_average_after": load_average(),
            "note": f"cold, photos only: decode + resize + {matcher.config['data']['feature_backbone']} + projection, "
                    "batch 32, one thread, in this process"}  # fmt: skip


def reference_captions(data: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(data / "captions.txt", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            out.setdefault(r["image"], []).append(r["caption"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--export", nargs="+", metavar="RUN", help="re-export the packaged model from the best of these runs")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--image-queries", type=int, default=50)
    ap.add_argument("--all-photos", action="store_true",
                    help="also index all 7,000 Flickr8k photos and time the queries over them (default: the 1,000 dev photos)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data)
    # As the itmatch command line does for its process (itmatch.memory: photo batches at 380 px
    # run 5x faster when their freed activations stay mapped; results/cpu_memory.json).
    result: dict = {"load_average_at_start": load_average(), "retain_freed_memory": retain_freed_memory()}
    if args.export:
        from itmatch.pretrained import export_model

        chosen, candidates = pick_run([Path(r) for r in args.export])
        export_model(chosen, PACKAGE_DIR, dtype="float16", name=NAME, replace=True)
        result["export"] = {"chosen": str(chosen), "by": "best validation rsum of the run's summary.json "
                            "(its held-out training images), not dev", "candidates": candidates}  # fmt: skip
        print(f"exported {chosen} -> {PACKAGE_DIR}")

    folder = installed_models()[NAME]
    manifest = read_manifest(folder)
    model_files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != CARD}
    result["model"] = {"name": NAME, "folder": str(folder.relative_to(REPO_ROOT)), "files_bytes": model_files,
                       "bytes": sum(model_files.values()), "dtype": manifest["dtype"],
                       "weights_sha256": manifest["weights"]["sha256"], "parameters": manifest["weights"]["parameters"],
                       "recipe": manifest["config"]["name"], "source": manifest["source"],
                       "backbones": manifest["backbones"]}  # fmt: skip

    t = time.perf_counter()
    matcher = Matcher.from_pretrained(NAME)
    result["load_seconds"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    corpus, feats = dev_features(matcher, data)
    dev = dev_scores(matcher, corpus, feats)
    result["dev"] = {"protocol": "all (1,000 dev images, 5,000 captions)", "metrics": dev,
                     "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
    print(f"dev (shipped {manifest['dtype']} file): rsum {dev['rsum']:.2f}, probe {dev['probe_acc']:.1f}")
    source_ckpt = Path(manifest["source"]["checkpoint"])
    if source_ckpt.is_file():
        src = dev_scores(Matcher.from_run(source_ckpt), corpus, feats)
        result["dev"]["source_checkpoint_float32"] = {"checkpoint": str(source_ckpt), "rsum": src["rsum"],
                                                      "probe_acc": src["probe_acc"]}  # fmt: skip
        print(f"dev (source float32 checkpoint): rsum {src['rsum']:.2f}")

    captions = reference_captions(data)
    dev_names = (data / "dev_images.txt").read_text().split()
    dev_photos = WORK / "dev-photos"
    if not dev_photos.is_dir() or len(list(dev_photos.iterdir())) != len(dev_names):
        shutil.rmtree(dev_photos, ignore_errors=True)
        dev_photos.mkdir(parents=True)
        for n in dev_names:
            shutil.copy(data / "images" / n, dev_photos / n)
    dev_index = WORK / "index-dev"
    result["index_build"] = timed_build(matcher, dev_photos, dev_index, "the 1,000 Flickr8k dev photos")
    engine = SearchEngine(PhotoIndex.open(dev_index), matcher)
    examples = []
    for query, words in FAILURE_QUERIES:
        hits = engine.search_text(query, 5)
        rows = []
        for h in hits:
            refs = captions.get(Path(h.path).name, [])
            hit = says(refs, words)
            rows.append({"photo": h.path, "score": round(h.score, 4), "caption": refs[0] if refs else None,
                         "captions_mention": hit})  # fmt: skip
        relevant = sum(says(captions.get(n, []), words) for n in dev_names)
        examples.append({"query": query, "words": words, "top5": rows, "top5_with_words": sum(r["captions_mention"] for r in rows),
                         "dev_photos_with_words": relevant})  # fmt: skip
        print(f"{query!r}: {sum(r['captions_mention'] for r in rows)}/5 top photos' captions mention {words}; "
              f"{relevant} dev photos do")  # fmt: skip
    result["failure_examples"] = {"index": "the 1,000 Flickr8k dev photos", "queries": examples,
                                  "judge": "a result counts when one of its 5 reference captions has a word of every group (whole words)"}  # fmt: skip

    index_dir = dev_index
    images = dev_photos
    if args.all_photos:
        images = data / "images"
        index_dir = WORK / "index-f8k"
        result["index_build_all_photos"] = timed_build(matcher, images, index_dir, "all 7,000 Flickr8k photos")
    # The queries, over the index just built.
    t = time.perf_counter()
    engine = SearchEngine(PhotoIndex.open(index_dir), matcher)
    engine.warm_up()
    result["engine_load_seconds"] = round(time.perf_counter() - t, 3)
    dev_set = set(dev_names)
    rows = [(img, c) for img, caps in captions.items() if img in dev_set for c in caps]
    rng = random.Random(0)
    queries = rng.sample(rows, args.queries)
    for _, caption in queries[:10]:  # warm-up
        engine.search_text(caption, 10)
    ms, hits = timed(lambda caption: engine.search_text(caption, 10), [caption for _, caption in queries])
    found = sum(any(h.path == image for h in top) for (image, _), top in zip(queries, hits, strict=True))
    result["text_query"] = {"k": 10, "photos_searched": len(engine.index), "index": str(index_dir.name), "end_to_end": percentiles(ms),
                            "found_own_photo_in_top10": round(100 * found / len(queries), 1),
                            "queries": "dev-split captions, random sample (seed 0), one at a time: "
                                       "tokenise + MiniLM + projection + exact search"}  # fmt: skip
    result["image_query"] = image_query_latency(engine, rng.sample([images / p.path for p in engine.index.photos], args.image_queries))
    print(f"text query p50 {result['text_query']['end_to_end']['p50_ms']} ms, "
          f"p99 {result['text_query']['end_to_end']['p99_ms']} ms")  # fmt: skip

    result["torch_threads"] = torch.get_num_threads()
    result["peak_rss_mb"] = peak_rss_mb()
    path = write_result("pretrained_model", result)
    card = {"name": NAME, "dev": {k: round(v, 2) for k, v in dev.items() if isinstance(v, float)},
            "dev_data": "Flickr8k dev, 1,000 images, protocol all", "weights_sha256": manifest["weights"]["sha256"],
            "scored_by": "benchmarks/pretrained_model.py from the shipped file", "results": "benchmarks/results/pretrained_model.json",
            "date": datetime.date.today().isoformat()}  # fmt: skip
    atomic_write_text(folder / CARD, json.dumps(card, indent=1) + "\n")
    print(f"wrote {path} and {folder / CARD}")


if __name__ == "__main__":
    main()
