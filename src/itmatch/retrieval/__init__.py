"""Search with a trained run: index a photo folder (and sentences), query by sentence or by photo.

* :func:`build_index` (:mod:`itmatch.retrieval.index`) / :class:`PhotoIndex`
  (:mod:`itmatch.retrieval.index_store`): the on-disk index, incremental and atomic, tied to the
  model that built it; the folder scan (:mod:`~itmatch.retrieval.scan`) and caption files
  (:mod:`~itmatch.retrieval.captions`) it reads.
* :class:`ExactSearch` / :class:`FaissSearch` (:mod:`itmatch.retrieval.vectors`): top-k by inner
  product, exact (torch) or approximate (FAISS, optional extra).
* :class:`SearchEngine` (:mod:`itmatch.retrieval.engine`): index + model -> ranked :class:`Hit` lists.
* :func:`itmatch.retrieval.service.create_app`: the HTTP API and search page (FastAPI, optional
  extra ``serve``); not imported here so the library does not need FastAPI.
"""

from itmatch.retrieval.captions import read_captions
from itmatch.retrieval.engine import Hit, SearchEngine, clean_query
from itmatch.retrieval.index import UpdateSummary, build_index
from itmatch.retrieval.index_store import Caption, IndexModelMismatchError, Photo, PhotoIndex, read_manifest
from itmatch.retrieval.scan import IMAGE_EXTENSIONS
from itmatch.retrieval.vectors import ExactSearch, FaissSearch, VectorSearch, recall_at_k

__all__ = [
    "IMAGE_EXTENSIONS",
    "Caption",
    "ExactSearch",
    "FaissSearch",
    "Hit",
    "IndexModelMismatchError",
    "Photo",
    "PhotoIndex",
    "SearchEngine",
    "UpdateSummary",
    "VectorSearch",
    "build_index",
    "clean_query",
    "read_captions",
    "read_manifest",
    "recall_at_k",
]
