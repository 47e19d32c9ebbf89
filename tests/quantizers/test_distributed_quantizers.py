"""Two gloo ranks that see DIFFERENT data against ONE process that sees both ranks' batches
concatenated, step by step, for each quantizer kind: EMA residual VQ (EnCodec), the factorized RVQ
with stale-code replacement (DAC / MuCodec) and the band-limited EMA stack (MUFFIN's MBS-RVQ).

The two ranks run this file as a script (``python test_distributed_quantizers.py RANK OUT``), once
per session for all scenarios (module fixture ``ranks``), and save, per scenario and step, the state
dict, the entries replaced, the codes and the RNG state; the tests rebuild the union reference here.

What "one process on the union" means per kind:

* factorized: a plain single process (stale usage is a sum over ranks), its loss the mean over the
  union batch, so its gradient is the ranks' average gradient (the ranks average theirs by hand,
  as DDP does; not by wrapping in DDP, whose buffer broadcast would hide ranks that diverge).
* EMA codebooks: the documented contract counts frames *per rank* (``cluster_size``, the dead-code
  threshold, k-means sizes), so the single process holding both ranks' data has collectives that
  treat it as that: a sum over ranks is its own value, a mean divides by 2, a gather or a broadcast
  is the identity (``union_of_two_ranks``).
* Dead-code / stale-code replacement draws rank 0's vectors and broadcasts them, so its vectors are
  not the single process's draw: there the reference restarts every step from rank 0's state
  (teacher forcing) and must replace the same entries, agree on every other entry and statistic,
  and the replacement vectors must be vectors of the union batch; the two ranks must be identical.
* ``search_dropout`` (MUFFIN: 0.1) draws dropout masks per rank: with it only identical ranks are
  guaranteed (``mbs_muffin``); the union comparison of the MBS stack runs without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.quantizers import distributed
from codecplatform.quantizers.band_limit import BandLimit
from codecplatform.quantizers.ema_codebook import EMACodebook
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer
from codecplatform.quantizers.factorized import FactorizedCodebook, FactorizedResidualVectorQuantizer

WORLD = 2
LR = 0.5


@dataclass
class Scenario:
    build: Callable[[], nn.Module]
    steps: int
    batch: int  # examples per rank
    frames: int
    n_q: Callable[[int, int], Tensor | None]  # (step, rank) -> per-example counts (B,) or None
    teacher_forced: bool  # replacements happen: restart the reference from rank 0 every step
    union: bool = True  # False: ranks identical only (per-rank random search dropout)


def per_example(step: int, rank: int) -> Tensor:
    """Per-example codebook counts that differ between ranks and steps (quantizer dropout)."""
    return torch.tensor([[2, 1, 2], [1, 2, 2]][(step + rank) % 2])


SCENARIOS: dict[str, Scenario] = {
    # EnCodec's RVQ: k-means init on both ranks' frames, EMA counts/sums, no replacement
    "ema_stats": Scenario(
        lambda: ResidualVectorQuantizer(
            dimension=3, n_q=2, codebook_size=8, decay=0.8, kmeans_iters=4, threshold_ema_dead_code=0.0
        ),
        steps=4,
        batch=3,
        frames=8,
        n_q=per_example,
        teacher_forced=False,
    ),
    # every entry dead at step 0 (no k-means: counts 0), then a threshold that keeps replacing
    "ema_dead": Scenario(
        lambda: ResidualVectorQuantizer(
            dimension=3, n_q=2, codebook_size=16, decay=0.5, kmeans_init=False, threshold_ema_dead_code=1.0
        ),
        steps=4,
        batch=3,
        frames=8,
        n_q=per_example,
        teacher_forced=True,
    ),
    # DAC's factorized RVQ, stale counters below the tolerance, SGD on the union loss
    "factorized_stats": Scenario(
        lambda: FactorizedResidualVectorQuantizer(
            dimension=4, n_q=2, codebook_size=16, codebook_dim=2, stale_tolerance=50
        ),
        steps=4,
        batch=3,
        frames=6,
        n_q=per_example,
        teacher_forced=False,
    ),
    # MuCodec's stale-code replacement, reached every other step
    "factorized_stale": Scenario(
        lambda: FactorizedResidualVectorQuantizer(
            dimension=4, n_q=2, codebook_size=16, codebook_dim=2, stale_tolerance=2
        ),
        steps=5,
        batch=3,
        frames=6,
        n_q=per_example,
        teacher_forced=True,
    ),
    # MUFFIN's MBS-RVQ (scales [4, 2, 1, 1]) without search dropout or replacement: exact union
    "mbs_stats": Scenario(
        lambda: ResidualVectorQuantizer(
            dimension=3,
            n_q=4,
            codebook_size=8,
            decay=0.8,
            kmeans_iters=4,
            threshold_ema_dead_code=0.0,
            stage_hook=BandLimit([4, 2, 1, 1]),
        ),
        steps=3,
        batch=2,
        frames=16,
        n_q=lambda step, rank: None,
        teacher_forced=False,
    ),
    # MBS-RVQ as MUFFIN trains it: search dropout 0.1, k-means, dead codes at threshold 2
    "mbs_muffin": Scenario(
        lambda: ResidualVectorQuantizer(
            dimension=3,
            n_q=4,
            codebook_size=16,
            decay=0.8,
            kmeans_iters=4,
            threshold_ema_dead_code=2.0,
            search_dropout=0.1,
            stage_hook=BandLimit([4, 2, 1, 1]),
        ),
        steps=3,
        batch=2,
        frames=16,
        n_q=lambda step, rank: None,
        teacher_forced=True,
        union=False,
    ),
}


with torch.random.fork_rng():
    DIMENSIONS = {name: scenario.build().dimension for name, scenario in SCENARIOS.items()}


def data(name: str, step: int, rank: int, scenario: Scenario) -> Tensor:
    """(B, D, T') latents. Rank 0: N(0, 1); rank 1: N(1.5, 0.5^2) drifting by +1 along time: other
    counts and sums, not a permutation of rank 0's."""
    g = torch.Generator().manual_seed(1000 * list(SCENARIOS).index(name) + 10 * step + rank)
    z = torch.randn(scenario.batch, DIMENSIONS[name], scenario.frames, generator=g)
    return z if rank == 0 else 0.5 * z + 1.5 + torch.linspace(0.0, 1.0, scenario.frames)


def replacement_log(model: nn.Module) -> list[Tensor]:
    """Wrap each layer's replacement so that it appends (layer, replaced entries (K,) bool)."""
    log: list = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, EMACodebook):

            def dead(vectors, layer=layer, original=layer._replace_dead_codes, i=i):
                expired = layer.cluster_size < layer.threshold_ema_dead_code
                original(vectors)
                log.append((i, expired.clone()))

            layer._replace_dead_codes = dead
        elif isinstance(layer, FactorizedCodebook):

            def stale(z_e, codes, mask, layer=layer, original=layer._replace_stale, i=i):
                before = layer.codebook.weight.detach().clone()
                original(z_e, codes, mask)
                log.append((i, (layer.codebook.weight.detach() != before).any(dim=1)))

            layer._replace_stale = stale
    return log


def train_step(model: nn.Module, z: Tensor, n_q: Tensor | None, average: bool) -> dict:
    """One training step; returns the codes and the replaced entries per layer."""
    log = replacement_log(model)
    out = model(z, n_q)
    params = [p for p in model.parameters() if p.requires_grad]
    if params:
        loss = out.losses["codebook"] + 0.25 * out.losses["commit"] + F.mse_loss(out.z_q, z)
        model.zero_grad()
        loss.backward()
        for p in params:
            if average:  # what DDP does to the gradients (torch.distributed directly: not the code under test)
                dist.all_reduce(p.grad)
                p.grad.div_(WORLD)
        with torch.no_grad():
            for p in params:
                p.sub_(LR * p.grad)
    replaced = torch.zeros(len(model.layers), model.codebook_sizes[0], dtype=torch.bool)
    for i, mask in log:
        replaced[i] |= mask
    for layer in model.layers:  # drop the wrappers
        layer.__dict__.pop("_replace_dead_codes", None)
        layer.__dict__.pop("_replace_stale", None)
    return {"codes": out.codes.detach().clone(), "replaced": replaced}


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_rank(rank: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{out}/store", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    results = {}
    for name, scenario in SCENARIOS.items():
        torch.manual_seed(0)  # the same initial model on every rank (DDP broadcasts it)
        model = scenario.build().train()
        torch.manual_seed(1000 + rank)  # per-rank random draws: only broadcast ones may agree
        records = [{"state": snapshot(model)}]
        for step in range(scenario.steps):
            z = data(name, step, rank, scenario)
            rng = torch.get_rng_state()
            record = train_step(model, z, scenario.n_q(step, rank), average=True)
            records.append({"state": snapshot(model), "rng": rng, **record})
        results[name] = records
    dist.barrier()
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_quantizers")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [out / f"rank{rank}.log" for rank in range(WORLD)]
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "w") as stream:
            procs.append(
                subprocess.Popen([sys.executable, __file__, str(rank), str(out)], stdout=stream, stderr=stream, env=env)
            )
    deadline = time.monotonic() + 180
    try:  # a rank that fails leaves the other waiting in a collective: stop it at once
        while any(p.poll() is None for p in procs) and all(p.poll() in (None, 0) for p in procs):
            assert time.monotonic() < deadline, "the two ranks did not finish in 180 s"
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    failed = [
        f"rank {r} (exit {p.returncode}):\n{logs[r].read_text()[-3000:]}" for r, p in enumerate(procs) if p.returncode
    ]
    assert not failed, "\n".join(failed)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.fixture
def union_of_two_ranks(monkeypatch):
    """This process holds the data of both ranks: collectives as seen by their lone holder."""

    def all_gather(out, tensor, **kwargs):
        out[0].copy_(tensor)
        for o in out[1:]:
            o.zero_()  # the other rank contributes no rows (all_gather_rows: count 0)

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: WORLD)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None, **k: tensor)  # already the sum over ranks
    monkeypatch.setattr(dist, "broadcast", lambda tensor, src=0, **k: tensor)
    monkeypatch.setattr(dist, "all_gather", all_gather)


def union_batch(name: str, scenario: Scenario, step: int) -> tuple[Tensor, Tensor | None]:
    z = torch.cat([data(name, step, rank, scenario) for rank in range(WORLD)])
    counts = [scenario.n_q(step, rank) for rank in range(WORLD)]
    return z, None if counts[0] is None else torch.cat(counts)


def assert_ranks_identical(records: list[list[dict]]) -> None:
    for step, (r0, r1) in enumerate(zip(*records)):
        for key, value in r0["state"].items():
            assert torch.equal(value, r1["state"][key]), f"step {step}: {key} differs between the ranks"
        if "replaced" in r0:
            assert torch.equal(r0["replaced"], r1["replaced"]), f"step {step}: the ranks replaced other entries"


def assert_ranks_saw_different_codes(records: list[list[dict]]) -> None:
    """The scenario discriminates: the ranks' code histograms differ at every step."""
    for step in range(1, len(records[0])):
        k = int(records[0][step]["codes"].max()) + 1
        hists = [torch.bincount(r[step]["codes"].flatten(), minlength=k) for r in records]
        assert not torch.equal(hists[0], hists[1]), f"step {step}: both ranks used the codes equally often"


def close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def replaced_rows(key: str, replaced: Tensor) -> Tensor | None:
    """Rows of a state entry that a replacement overwrote (None: not a per-entry table)."""
    for i in range(replaced.shape[0]):
        if key.startswith(f"layers.{i}.") and key.rsplit(".", 1)[-1] in ("embed", "embed_avg", "weight"):
            return replaced[i]
    return None


def layer_inputs(model: nn.Module) -> tuple[dict, list]:
    """Record each layer's masked-in input vectors (rows) while the model runs."""
    seen: dict[int, Tensor] = {}

    def hook(module, args, i):
        z, mask = args[0], args[1]
        if isinstance(module, FactorizedCodebook):
            z = F.normalize(module.in_proj(z), dim=1)  # its replacements: normalized projected latents
        seen[i] = z.detach().transpose(1, 2)[mask].reshape(-1, z.shape[1]).clone()

    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: hook(m, a, i)) for i, layer in enumerate(model.layers)]
    return seen, handles


def check_union(name: str, records: list[list[dict]]) -> None:
    """Step by step: one process on the concatenated batch reaches rank 0's state (module docstring)."""
    scenario = SCENARIOS[name]
    torch.manual_seed(0)
    model = scenario.build().train()
    assert all(close(v, records[0][0]["state"][k]) for k, v in snapshot(model).items())
    torch.manual_seed(1000)  # rank 0's draws (k-means starts)
    for step in range(scenario.steps):
        before, after = records[0][step], records[0][step + 1]
        if scenario.teacher_forced:
            model.load_state_dict(before["state"])
            torch.set_rng_state(after["rng"])
        z, n_q = union_batch(name, scenario, step)
        seen, handles = layer_inputs(model)
        mine = train_step(model, z, n_q, average=False)
        for handle in handles:
            handle.remove()
        assert torch.equal(mine["replaced"], after["replaced"]), f"step {step}: other entries replaced"
        if not scenario.teacher_forced:
            assert not mine["replaced"].any()
        for key, value in snapshot(model).items():
            theirs = after["state"][key]
            rows = replaced_rows(key, mine["replaced"])
            if rows is None or not rows.any():
                assert close(value, theirs), f"step {step}: {key} differs from one process on both batches"
                continue
            assert close(value[~rows], theirs[~rows]), f"step {step}: {key} (entries kept) differs"
            if key.endswith("embed") or key.endswith("weight"):  # the new entries are vectors of the union batch
                layer = int(key.split(".")[1])
                pool = seen[layer]
                for row in theirs[rows]:
                    assert ((pool - row).abs().amax(dim=1) < 1e-5).any(), f"step {step}: {key} got a foreign vector"


@pytest.mark.parametrize("name", [n for n, s in SCENARIOS.items() if s.union])
def test_two_ranks_with_different_data_match_one_process_on_both_batches(name, ranks, request):
    records = [r[name] for r in ranks]
    assert_ranks_identical(records)
    assert_ranks_saw_different_codes(records)
    if not name.startswith("factorized"):  # factorized: a plain single process
        request.getfixturevalue("union_of_two_ranks")
    check_union(name, records)
    if not name.startswith("factorized") and not SCENARIOS[name].teacher_forced:
        assert_counts_per_rank(name, records[0])


def assert_counts_per_rank(name: str, records: list[dict]) -> None:
    """The EMA contract that makes the union reference divide by 2: after the first step (k-means sizes
    and EMA counts), each codebook's ``cluster_size`` sums to the frames per rank it learns from:
    every frame (``dropout_mode="mask_sum"``) or the masked-in frames (``"mask_residual"``)."""
    scenario = SCENARIOS[name]
    _, n_q = union_batch(name, scenario, 0)
    state = records[1]["state"]
    model = scenario.build()
    every_frame = getattr(model, "dropout_mode", "mask_residual") == "mask_sum"
    for k in range(len(model.layers)):
        examples = WORLD * scenario.batch if n_q is None or every_frame else int((n_q > k).sum())
        total = float(state[f"layers.{k}.cluster_size"].sum())
        assert total == pytest.approx(examples * scenario.frames / WORLD), f"layer {k}: counts are not per rank"


def test_dead_codes_are_replaced_by_the_same_vectors_on_every_rank(ranks):
    """Replacement happened, on both ranks alike (vectors included), in every replacing scenario."""
    for name in ("ema_dead", "factorized_stale", "mbs_muffin"):
        records = [r[name] for r in ranks]
        assert_ranks_identical(records)
        replaced = torch.stack([step["replaced"] for step in records[0][1:]])
        assert replaced.any(dim=(1, 2)).sum() >= 2, f"{name}: replacements at fewer than 2 steps"


def test_factorized_ranks_use_codes_the_other_rank_does_not(ranks):
    """factorized_stats discriminates the stale-usage reduction: some entry is used by one rank only."""
    records = [r["factorized_stats"] for r in ranks]
    one_rank_only = False
    for step in range(1, len(records[0])):
        for layer in range(records[0][step]["codes"].shape[1]):
            used = [torch.bincount(r[step]["codes"][:, layer].flatten(), minlength=16) > 0 for r in records]
            one_rank_only |= bool((used[0] ^ used[1]).any())
    assert one_rank_only


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), Path(sys.argv[2]))
