"""EMACodebook against audiocraft's EuclideanCodebook: z_q comes from the codebook that chose the
codes (before the EMA update and dead-code replacement), and the dead-code threshold counts frames
per rank per step, so N ranks replace the same codes as one process with the same per-rank batch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.distributed as dist

import codecplatform.quantizers.distributed as distributed
from codecplatform.quantizers.ema_codebook import EMACodebook


def test_z_q_uses_the_codebook_that_chose_the_codes():
    torch.manual_seed(0)
    cb = EMACodebook(dimension=2, codebook_size=4, kmeans_init=False, decay=0.99, threshold_ema_dead_code=2.0)
    with torch.no_grad():
        cb.embed.copy_(torch.tensor([[0.0, 0.0], [3.0, 3.0], [-3.0, 3.0], [3.0, -3.0]]))
        cb.embed_avg.copy_(cb.embed)
        cb.cluster_size.copy_(torch.tensor([5.0, 0.0, 5.0, 5.0]))  # code 1 is dead: replaced this step
    frames = torch.cat([0.1 * torch.randn(16, 2), torch.tensor([[3.2, 2.9]])])  # the last one picks code 1
    z = frames.t()[None]  # (1, 2, 17)
    before = cb.embed.clone()
    cb.train()
    out = cb(z)
    codes = out.codes[0, 0]
    assert codes[-1] == 1 and (codes[:-1] == 0).all()
    assert not torch.equal(cb.embed[1], before[1]), "code 1 should have been replaced"
    assert torch.equal(out.z_q[0].t(), before[codes])  # (1,D,T)->(T,D): the pre-update entries
    assert torch.equal(out.z_q[0, :, -1], torch.tensor([3.0, 3.0]))


def fake_ranks(monkeypatch, world: int) -> None:
    """Pretend to be one of ``world`` ranks that all hold this rank's tensors."""
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None, **k: tensor.mul_(world))
    monkeypatch.setattr(dist, "broadcast", lambda tensor, src=0, **k: tensor)
    monkeypatch.setattr(dist, "all_gather", lambda out, tensor, **k: [o.copy_(tensor) for o in out])


def batch() -> torch.Tensor:
    """(1, 2, 14): 10 frames at code 0, 3 at code 1, 1 at code 2, none at codes 3..7."""
    points = [(0.0, 0.0)] * 10 + [(10.0, 0.0)] * 3 + [(0.0, 10.0)]
    return (torch.tensor(points) + 0.01 * torch.randn(len(points), 2)).t()[None]


def codebook() -> EMACodebook:
    cb = EMACodebook(dimension=2, codebook_size=8, kmeans_init=False, decay=0.5, threshold_ema_dead_code=2.0)
    with torch.no_grad():
        cb.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]] + [[50.0 + i, 50.0] for i in range(5)]))
        cb.embed_avg.copy_(cb.embed * 2.0)
        cb.cluster_size.fill_(2.0)
    return cb.train()


def run(steps: int) -> tuple[EMACodebook, list[set[int]]]:
    """Train a fresh codebook on the same batch; per step, the codes that were replaced."""
    torch.manual_seed(1)
    z = batch()
    cb = codebook()
    replaced = []
    for _ in range(steps):
        before = cb.embed.clone()
        cb(z)
        in_batch = (cb.embed[:, None, :] == z[0].t()[None]).all(-1).any(1)  # entry equals a batch vector
        replaced.append({k for k in range(8) if in_batch[k] and not torch.equal(before[k], cb.embed[k])})
    return cb, replaced


def test_dead_code_threshold_counts_frames_per_rank(monkeypatch):
    single, single_replaced = run(steps=4)
    # one step from cluster_size 2, decay 0.5: code 2 (1 frame per rank) falls to 1.5 < 2 and is replaced
    assert single_replaced[0] == {2, 3, 4, 5, 6, 7}
    fake_ranks(monkeypatch, world=2)  # two ranks, each with the same per-rank batch
    multi, multi_replaced = run(steps=4)
    assert multi_replaced == single_replaced
    for name, buffer in single.named_buffers():
        assert torch.allclose(dict(multi.named_buffers())[name], buffer), name


def test_kmeans_init_counts_frames_per_rank(monkeypatch):
    fake_ranks(monkeypatch, world=2)  # k-means sees the rows of both ranks
    torch.manual_seed(0)
    cb = EMACodebook(dimension=2, codebook_size=4, kmeans_iters=3, threshold_ema_dead_code=0).train()
    cb._init_from(torch.randn(30, 2))
    assert cb.cluster_size.sum().item() == pytest.approx(30.0)


SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    from codecplatform.quantizers.ema_codebook import EMACodebook

    def train(z, steps=5):
        torch.manual_seed(1)
        cb = EMACodebook(dimension=2, codebook_size=16, kmeans_init=False, decay=0.8, threshold_ema_dead_code=2.0)
        cb.train()
        for _ in range(steps):
            cb(z)
        return {{k: v.clone() for k, v in cb.state_dict().items()}}

    def worker(rank, z, out):
        dist.init_process_group("gloo", init_method="file://{out}/store", rank=rank, world_size=2)
        mine = z if rank == 0 else z.flip(-1)  # other frames order, same counts and sums
        torch.save(train(mine), f"{out}/rank{{rank}}.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        torch.manual_seed(0)
        z = torch.randn(2, 2, 24)
        torch.save(train(z), "{out}/single.pt")
        mp.spawn(worker, args=(z, "{out}"), nprocs=2)
    """
)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_the_same_per_rank_batch(tmp_path):
    script = tmp_path / "ema_ddp.py"
    script.write_text(SCRIPT.format(out=str(tmp_path)))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single, rank0, rank1 = (torch.load(tmp_path / f"{name}.pt") for name in ("single", "rank0", "rank1"))
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
        assert torch.allclose(rank0[key], single[key], atol=1e-5), f"{key}: 2 ranks differ from 1 process"


def test_a_threshold_above_the_reachable_counts_warns_once_about_churn() -> None:
    """32 frames per step for 64 entries: an entry's EMA count stays near 0.5, so at EnCodec's threshold 2
    every entry is replaced at every step (a random codebook); the codebook says so once."""
    torch.manual_seed(0)
    churning = EMACodebook(dimension=4, codebook_size=64, decay=0.9, kmeans_iters=2, threshold_ema_dead_code=2.0)
    fine = EMACodebook(dimension=4, codebook_size=64, decay=0.9, kmeans_iters=2, threshold_ema_dead_code=0.05)
    churning.train(), fine.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(EMACodebook.CHURN_STEPS + 5):
            z = torch.randn(2, 4, 16)  # 32 frames
            churning(z)
            fine(z)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages  # once, from the churning codebook only
    assert "threshold_ema_dead_code=2.0" in messages[0] and "32 frames per step" in messages[0]
    assert "0.50 per entry" in messages[0]
