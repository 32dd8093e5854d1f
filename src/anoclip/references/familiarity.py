"""Do the inputs look like the known-good images? (wrong product, wrong camera)

With g the L2-normalised global features `[N, D]` (`PatchSet.glob`) of the inputs and G
`[M, D]` those of the known-good images (M ≥ 2):

    spread_i = 1 − cos(G_i, mean_{j ≠ i} G_j)      the known-good images' own leave-one-out
    d(x)     = 1 − cos(g_x, mean_j G_j)             an input's distance to them
    unfamiliar ⟺ d(x) > FACTOR · max_i spread_i

FACTOR = 12, from EfficientNet-Lite0 features: against the 4 transistor train/good images
(spread at most 0.018), the 100 transistor test images lie at 0.6–5.7× that spread (median
1.0; the farthest are "misplaced" parts, a missing transistor, at 1.5–5.7×), good screws at
38–43× and magnetic tiles over 30×. A defect changes part of the image; another product
changes all of it, so 12 leaves a margin of 2× on one side and 3× on the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FACTOR = 12.0


def centroid_distance(glob: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """d(x) `[N]`: 1 − cosine of each row of `glob` `[N, D]` with the mean of `reference`."""
    centre = F.normalize(reference.float(), dim=1).mean(dim=0, keepdim=True)
    return 1.0 - F.cosine_similarity(F.normalize(glob.float(), dim=1), centre, dim=1)


def own_spread(reference: torch.Tensor) -> torch.Tensor:
    """spread `[M]`: each known-good image's distance to the mean of the others (M ≥ 2)."""
    g = F.normalize(reference.float(), dim=1)
    m = g.shape[0]
    others = (g.sum(dim=0, keepdim=True) - g) / (m - 1)
    return 1.0 - F.cosine_similarity(g, others, dim=1)


def unfamiliar(glob: torch.Tensor, reference: torch.Tensor, factor: float = FACTOR) -> torch.Tensor:
    """`[N]` bool: inputs farther from the known-good images than `factor` times their own
    leave-one-out spread (module doc); all False with fewer than 2 known-good images."""
    if reference.shape[0] < 2:
        return torch.zeros(glob.shape[0], dtype=torch.bool)
    return centroid_distance(glob, reference) > factor * own_spread(reference).max()


def unfamiliar_message(count: int, total: int, against: str) -> str:
    """The one-line warning for `count` of `total` unfamiliar inputs."""
    return (
        f"{count} of {total} input image(s) do not look like {against} (global features "
        f"over {FACTOR:g}× farther than those images are from each other): wrong product, "
        "camera or lighting? Their scores and decisions are not to be trusted"
    )
