"""Centering each modality: what the modality gap means for ranking.

Shifting every *candidate* by one vector ``c`` moves every score of a query ``q`` by the same
``q . c``, so (before renormalisation) no query's ranking changes; shifting the *query* by ``c``
adds ``c . t`` to candidate ``t``'s score, which can reorder candidates. So the gap between the
two modalities' centroids is largely ranking-neutral, and only its interaction with the
renormalisation and the query side can matter. :func:`center_modalities` removes it (each
modality minus its own mean, then L2-normalised again) so that recall and separability can be
measured with and without it (``itmatch evaluate --center``).
"""

from __future__ import annotations

import torch

from itmatch.models.encoders import l2_normalize


def center_modalities(image_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each modality minus its own mean, renormalised to unit length (float32 or the inputs' dtype)."""

    def centred(x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return l2_normalize(x - x.mean(dim=0, keepdim=True))

    return centred(image_emb), centred(text_emb)
