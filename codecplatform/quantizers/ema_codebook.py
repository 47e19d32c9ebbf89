"""Single-codebook vector quantizers.

``EMACodebook`` is the EnCodec / SoundStream codebook: Euclidean nearest neighbour, entries
updated by exponential moving averages of the assigned vectors (no gradient), k-means
initialisation on the first training batch, dead entries replaced by vectors of the batch,
commitment loss on the encoder side, straight-through gradient.

Codebook statistics are averaged over DDP ranks (as audiocraft averages the buffers every
step), so ``cluster_size`` and ``threshold_ema_dead_code`` count frames per rank per step
whatever the number of ranks; random choices (k-means seeds, replacement vectors) are broadcast
from rank 0, so every rank holds the same codebook.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.quantizers.distributed import all_gather_rows, all_reduce_mean_, broadcast_, world_size
from codecplatform.types import QuantizerOutput


def kmeans(x: Tensor, num_clusters: int, iters: int) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on rows of x (N, D) -> (centroids (K, D), cluster sizes (K,)).

    Centroids start from random rows (with replacement when N < K); empty clusters keep
    their previous centroid.
    """
    centroids = sample_rows(x, num_clusters)
    sizes = torch.zeros(num_clusters, device=x.device, dtype=x.dtype)
    for _ in range(iters):
        assign = nearest(x, centroids)
        sizes = torch.bincount(assign, minlength=num_clusters).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = sizes > 0
        centroids = torch.where(filled[:, None], sums / sizes.clamp(min=1)[:, None], centroids)
    return centroids, sizes


def sample_rows(x: Tensor, n: int) -> Tensor:
    """n random rows of x (N, D): without replacement when N >= n."""
    if x.shape[0] >= n:
        index = torch.randperm(x.shape[0], device=x.device)[:n]
    else:
        index = torch.randint(0, x.shape[0], (n,), device=x.device)
    return x[index]


def nearest(x: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codebook row (K, D) for each row of x (N, D), Euclidean."""
    distance = x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(1)[None, :]  # (N, K)
    return distance.argmin(dim=1)


class EMACodebook(nn.Module):
    """One codebook with EMA updates: (B, D, T') -> QuantizerOutput with codes (B, 1, T').

    Args:
        dimension: vector size D.
        codebook_size: number of entries K.
        decay: EMA decay of counts and sums (EnCodec: 0.99).
        epsilon: Laplace smoothing of the counts.
        kmeans_init: initialise the entries by k-means on the first training batch.
        kmeans_iters: k-means iterations.
        threshold_ema_dead_code: entries whose EMA count (frames per rank per step, averaged
            over ranks) falls below this are replaced by random vectors of the current batch
            (0 disables replacement).
        search_dropout: in training only, the nearest-neighbour search sees the input vectors
            and the codebook through dropout with this probability (each element zeroed, the rest
            scaled by 1 / (1 - p), independently for both); the EMA update and the returned
            z_q use the undropped values. MUFFIN: 0.1. Default 0: plain search (EnCodec).
    """

    def __init__(
        self,
        dimension: int,
        codebook_size: int = 1024,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 50,
        threshold_ema_dead_code: float = 2.0,
        search_dropout: float = 0.0,
    ):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if not 0.0 <= search_dropout < 1.0:
            raise ValueError(f"search_dropout must be in [0, 1), got {search_dropout}")
        self.search_dropout = search_dropout
        if codebook_size < 2 or dimension < 1:
            raise ValueError(f"codebook_size must be >= 2 and dimension >= 1, got {codebook_size}, {dimension}")
        self.dimension = dimension
        self.codebook_size = codebook_size
        self.decay = decay
        self.epsilon = epsilon
        self.kmeans_iters = kmeans_iters
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self._churn_steps = 0  # consecutive training steps that replaced most entries (see _warn_churn)
        embed = (
            torch.zeros(codebook_size, dimension)
            if kmeans_init
            else nn.init.kaiming_uniform_(torch.empty(codebook_size, dimension))
        )
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    # -- inference -----------------------------------------------------------------------
    def encode(self, z: Tensor) -> Tensor:
        """(B, D, T') -> codes (B, T')."""
        b, d, t = z.shape
        flat = z.transpose(1, 2).reshape(-1, d).float()  # (B,D,T)->(B*T,D)
        return nearest(flat, self.embed).view(b, t)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, T') -> (B, D, T')."""
        return F.embedding(codes, self.embed).transpose(1, 2)

    # -- training ------------------------------------------------------------------------
    def _search(self, z: Tensor) -> Tensor:
        """(B, D, T') -> codes (B, T'): nearest entries with dropout on both sides (MUFFIN)."""
        b, d, t = z.shape
        flat = F.dropout(z.transpose(1, 2).reshape(-1, d).float(), self.search_dropout)  # (B*T', D)
        return nearest(flat, F.dropout(self.embed, self.search_dropout)).view(b, t)

    def forward(self, z: Tensor, mask: Tensor | None = None, update_mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize z (B, D, T'); ``mask`` (B,) bool marks the examples that count in the commitment
        loss, ``update_mask`` (B,) bool those that update the codebook (k-means init, EMA, dead codes);
        both default to all, ``update_mask`` to ``mask``.

        The returned z_q is the plain quantized value, looked up in the codebook that chose the
        codes, before this step's EMA update and dead-code replacement (as audiocraft); the
        residual stack applies the straight-through estimator.
        """
        b, d, t = z.shape
        if d != self.dimension:
            raise ValueError(f"latent has {d} channels, codebook dimension is {self.dimension}")
        z = z.float()
        if mask is None:
            mask = torch.ones(b, dtype=torch.bool, device=z.device)
        if update_mask is None:
            update_mask = mask
        active = z.transpose(1, 2)[update_mask].reshape(-1, d)  # (B,D,T)->(N_update*T,D)
        if self.training and not bool(self.initialized):
            self._init_from(active)
        codes = self._search(z) if self.training and self.search_dropout > 0 else self.encode(z)
        z_q = self.decode(codes)  # a copy: the in-place update below does not reach it
        if self.training:
            self._ema_update(active, codes[update_mask].reshape(-1))
        if bool(mask.any()):
            commit = F.mse_loss(z[mask], z_q[mask].detach())
        else:
            commit = z.sum() * 0.0
        return QuantizerOutput(z_q=z_q, codes=codes[:, None, :], losses={"commit": commit})

    @torch.no_grad()
    def _init_from(self, vectors: Tensor) -> None:
        data = all_gather_rows(vectors)
        if data.shape[0] == 0:
            return
        centroids, sizes = kmeans(data, self.codebook_size, self.kmeans_iters)
        sizes = sizes / world_size()  # frames of all ranks -> frames per rank, like the EMA counts
        broadcast_(centroids)
        broadcast_(sizes)
        self.embed.copy_(centroids)
        self.embed_avg.copy_(centroids)
        self.cluster_size.copy_(sizes)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, vectors: Tensor, codes: Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.codebook_size).float()  # (K,)
        sums = torch.zeros_like(self.embed).index_add_(0, codes, vectors)  # (K, D)
        all_reduce_mean_(counts)  # per-rank means: the threshold counts frames per rank
        all_reduce_mean_(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        self._replace_dead_codes(vectors)

    CHURN_STEPS = 20  # consecutive steps replacing more than half the entries before the warning

    def _warn_churn(self, expired_fraction: float, vectors: int) -> None:
        """Warn once when most entries are replaced at every step: the threshold is above the counts
        the entries can reach (about ``vectors / codebook_size`` per step), so the codebook is the last
        batch's random vectors rather than learned centroids, and the codes it gives carry little
        (seen on the small SpectroStream: 128 frames per step for 256 entries at threshold 2)."""
        self._churn_steps = self._churn_steps + 1 if expired_fraction > 0.5 else 0
        if self._churn_steps == self.CHURN_STEPS:
            warnings.warn(
                f"EMACodebook: {expired_fraction:.0%} of the {self.codebook_size} entries were replaced as dead at "
                f"each of the last {self.CHURN_STEPS} steps: threshold_ema_dead_code={self.threshold_ema_dead_code} "
                f"is above what an entry can reach with {vectors} frames per step "
                f"({vectors / self.codebook_size:.2f} per entry on average); lower threshold_ema_dead_code "
                "below the frames an entry gets per step, use fewer entries or larger batches",
                RuntimeWarning,
                stacklevel=2,
            )

    @torch.no_grad()
    def _replace_dead_codes(self, vectors: Tensor) -> None:
        if self.threshold_ema_dead_code <= 0:
            return
        expired = self.cluster_size < self.threshold_ema_dead_code  # identical on every rank
        self._warn_churn(float(expired.float().mean()), vectors.shape[0])
        if not bool(expired.any()):
            return
        pool = vectors if vectors.shape[0] > 0 else self.embed
        candidates = broadcast_(sample_rows(pool, self.codebook_size))
        self.embed.copy_(torch.where(expired[:, None], candidates, self.embed))
        self.embed_avg.copy_(torch.where(expired[:, None], candidates * self.threshold_ema_dead_code, self.embed_avg))
        self.cluster_size.copy_(
            torch.where(expired, torch.full_like(self.cluster_size, self.threshold_ema_dead_code), self.cluster_size)
        )
