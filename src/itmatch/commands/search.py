"""``itmatch search``: query an index by sentence or by photo and print the ranked results."""

from __future__ import annotations

import argparse
import json

from itmatch.commands._common import eprint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", metavar="INDEX", help="index folder made by itmatch index")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", metavar="SENTENCE", help="find the photos this sentence describes")
    what.add_argument("--image", metavar="PATH",
                      help="find similar photos (and the sentences that describe it, when captions are indexed)")
    what.add_argument("--similar", metavar="PHOTO", help="photos similar to an indexed photo (relative path or id)")
    p.add_argument("-k", type=int, default=10, help="results to show (default 10)")
    p.add_argument("--run", "--model", dest="run",
                   help="run, exported model folder or model name to query with (default: the one recorded in the index; it must be the same model)")
    p.add_argument("--checkpoint", default="best", help="with --run: best | last | a file name")
    p.add_argument("--exact", action="store_true", help="brute-force search even if the index has a FAISS index")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _table(hits: list, title: str) -> str:
    lines = [title, f"{'rank':>4}  {'score':>7}  {'id':>6}  {'photo' if hits and hits[0].kind == 'photo' else 'sentence'}"]
    for h in hits:
        what = h.path if h.kind == "photo" else f"{h.text}" + (f"  [{h.path}]" if h.path else "")
        lines.append(f"{h.rank:>4}  {h.score:>7.4f}  {h.id:>6}  {what}")
    if not hits:
        lines.append("  (no results)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from itmatch.errors import ItmatchError
    from itmatch.retrieval import SearchEngine

    if args.k < 1:
        raise ItmatchError(f"-k must be at least 1, got {args.k}")
    engine = SearchEngine.open(args.index, args.run, checkpoint=args.checkpoint, device=args.device, exact=args.exact)
    out: dict[str, object] = {}
    if args.text is not None:
        out["query"] = {"text": args.text}
        out["photos"] = engine.search_text(args.text, args.k)
    elif args.image is not None:
        out["query"] = {"image": args.image}
        vector = engine.embed_image(args.image)
        from itmatch.retrieval.engine import photo_hits, sentence_hits

        out["photos"] = photo_hits(engine.index.search_photos(vector, args.k)[0])
        if engine.index.has_captions:
            out["sentences"] = sentence_hits(engine.index.search_captions(vector, args.k)[0])
    else:
        key: int | str = int(args.similar) if args.similar.isdigit() and engine.index.photo(args.similar) is None else args.similar
        out["query"] = {"similar_to": args.similar}
        out["photos"] = engine.similar_photos(key, args.k)
    if args.json:
        payload = {name: ([h.to_dict() for h in v] if isinstance(v, list) else v) for name, v in out.items()}
        payload["images_root"] = str(engine.index.images_root)
        print(json.dumps(payload))
        return 0
    eprint(f"{args.index}: {len(engine.index)} photos in {engine.index.images_root}, {len(engine.index.captions)} sentences")
    print(_table(out["photos"], "photos"))
    if "sentences" in out:
        print()
        print(_table(out["sentences"], "sentences"))
    return 0
