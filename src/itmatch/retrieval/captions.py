"""Caption files to index: plain text, CSV or Karpathy JSON, with the photo each sentence describes."""

from __future__ import annotations

from pathlib import Path

from itmatch.errors import ItmatchError


def read_captions(path: str | Path) -> list[tuple[str, str | None]]:
    """Sentences to index, with the photo each describes when the file says so.

    ``.txt``: one sentence per line. ``.csv``: a header with a ``caption`` column and optionally
    an ``image`` column (the Flickr8k ``captions.txt`` is such a CSV). ``.json``: Karpathy split
    JSON (every image's ``sentences[].raw``, photo = ``filepath/filename``).
    """
    from itmatch.data.readers import read_csv_table, read_json_file, read_text_lines

    p = Path(path)
    if not p.is_file():
        raise ItmatchError(f"caption file {p} does not exist")
    lines = read_text_lines(p)  # non-UTF-8 bytes: an error naming the file and the byte
    first = next((line for line in lines if line.strip()), "").strip().lower()
    if p.suffix.lower() == ".json":
        data = read_json_file(p)
        try:
            out = []
            for image in data["images"]:
                photo = "/".join(x for x in (image.get("filepath"), image["filename"]) if x)
                out.extend((str(s["raw"]).strip(), photo) for s in image["sentences"])
            return out
        except (KeyError, TypeError) as exc:
            raise ItmatchError(f"{p}: expected Karpathy split JSON (images[].filename, images[].sentences[].raw): {exc}") from exc
    if p.suffix.lower() == ".csv" or first.startswith(("image,caption", "caption")):
        header, rows = read_csv_table(p)
        if "caption" not in header:
            raise ItmatchError(f"{p}: a CSV caption file needs a header with a 'caption' column, got {header}")
        ci, ii = header.index("caption"), header.index("image") if "image" in header else None
        out = [(row[ci].strip(), row[ii].strip() if ii is not None else None) for _, row in rows]
        return [(t, ph) for t, ph in out if t]
    return [(line.strip(), None) for line in lines if line.strip()]
