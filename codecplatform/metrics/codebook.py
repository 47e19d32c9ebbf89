"""Codebook statistics: usage histogram, entropy, perplexity, dead codes and DAC's bitrate efficiency.

``CodebookUsage`` keeps one summed ``(K, N)`` count state (``dist_reduce_fx="sum"``), so under DDP the
counts of all ranks are added before ``compute``: the statistics are those of the whole data set, not an
average of per-rank statistics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


def codebook_statistics(counts: Tensor) -> dict[str, Tensor]:
    """Statistics of code counts.

    Args:
        counts: (K, N) number of times each of the N entries of each of the K codebooks was used.

    Returns:
        ``usage`` (K, N) fraction of the codebook's uses per entry (all zero for an unused codebook),
        ``entropy`` (K,) in bits (0 for an unused codebook, never NaN),
        ``perplexity`` (K,) = 2 ** entropy (the effective number of entries used; 1 for an unused codebook),
        ``dead_codes`` (K,) long: entries never used,
        ``efficiency`` () = sum_k entropy_k / sum_k log2(N): DAC's bitrate efficiency, the fraction of the
        allotted bits that the code distribution actually carries.
    """
    if counts.dim() != 2:
        raise ValueError(f"counts must be (K, N), got shape {tuple(counts.shape)}")
    num_codebooks, codebook_size = counts.shape
    counts = counts.double()
    totals = counts.sum(dim=1, keepdim=True)  # (K, 1)
    usage = counts / totals.clamp(min=1.0)  # (K, N); zero row where the codebook was never used
    plogp = torch.where(usage > 0, usage * torch.log2(usage.clamp(min=1e-300)), torch.zeros_like(usage))
    entropy = (-plogp.sum(dim=1)).clamp(min=0.0) + 0.0  # (K,); clamp keeps -0.0, adding 0.0 makes it 0.0
    total_bits = num_codebooks * math.log2(codebook_size) if codebook_size > 1 else 0.0
    efficiency = entropy.sum() / total_bits if total_bits > 0 else entropy.sum() * 0.0
    return {
        "usage": usage.float(),
        "entropy": entropy.float(),
        "perplexity": torch.pow(2.0, entropy).float(),
        "dead_codes": (counts == 0).sum(dim=1).long(),
        "efficiency": efficiency.float(),
    }


def code_counts(
    codes: Tensor, codebook_size: int, n_q: Tensor | None = None, num_codebooks: int | None = None
) -> Tensor:
    """How often each code occurs: codes (B, K', T') in [0, N) -> counts (K, N) long, K = ``num_codebooks``
    (default K'). With ``n_q`` (B,) only codebooks ``k < n_q[b]`` of example ``b`` count (the rest were not
    used). No check and no host synchronization (training-step safe); ``CodebookUsage.update`` checks."""
    batch, used, _ = codes.shape
    num_codebooks = used if num_codebooks is None else num_codebooks
    weight = torch.ones(batch, used, dtype=torch.long, device=codes.device)  # (B, K')
    if n_q is not None:
        weight = (torch.arange(used, device=codes.device)[None, :] < n_q.to(codes.device)[:, None]).long()
    # flat index k * N + code per element, scattered into the (K * N) counts
    index = codes.long() + torch.arange(used, device=codes.device)[None, :, None] * codebook_size  # (B, K', T')
    counts = torch.zeros(num_codebooks * codebook_size, dtype=torch.long, device=codes.device)
    counts.scatter_add_(0, index.reshape(-1), weight[:, :, None].expand_as(index).reshape(-1))
    return counts.view(num_codebooks, codebook_size)


class CodebookUsage(Metric):
    """Accumulates code counts per codebook; ``compute`` returns ``codebook_statistics(counts)`` plus
    ``counts`` (K, N) long.

    ``update(codes, n_q=None)``: ``codes`` (B, K', T') long with K' <= K; when ``n_q`` (B,) is given only
    codebooks ``k < n_q[b]`` of example ``b`` are counted (the rest were not transmitted). Codebooks never
    seen keep zero counts (entropy 0, all entries dead).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_codebooks: int, codebook_size: int, **kwargs):
        super().__init__(**kwargs)
        if num_codebooks < 1 or codebook_size < 1:
            raise ValueError(
                f"num_codebooks and codebook_size must be >= 1, got num_codebooks={num_codebooks}, "
                f"codebook_size={codebook_size}"
            )
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.add_state(
            "counts", default=torch.zeros(num_codebooks, codebook_size, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, codes: Tensor, n_q: Tensor | None = None) -> None:
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B, K, T'), got shape {tuple(codes.shape)}")
        batch, k_used, _ = codes.shape
        if k_used > self.num_codebooks:
            raise ValueError(f"codes has {k_used} codebooks, the metric was built for {self.num_codebooks}")
        codes = codes.long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got range [{int(codes.min())}, {int(codes.max())}]"
            )
        if n_q is not None:
            n_q = torch.as_tensor(n_q, device=codes.device).reshape(-1)
            if n_q.numel() == 1:
                n_q = n_q.expand(batch)
            if n_q.numel() != batch:
                raise ValueError(f"n_q must have one entry per example ({batch}), got {n_q.numel()}")
        self.counts += code_counts(codes, self.codebook_size, n_q, self.num_codebooks)

    def compute(self) -> dict[str, Tensor]:
        stats = codebook_statistics(self.counts)
        stats["counts"] = self.counts.clone()
        return stats
