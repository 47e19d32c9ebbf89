"""Deliberate breakages of the core, applied one at a time: the suite must fail for each.

    .venv/bin/python tests/mutation_check.py            # every mutation (about 10-20 minutes on 2 cores)
    .venv/bin/python tests/mutation_check.py --only all_reduce_mean_broadcasts

Each mutation replaces one exact piece of source (it must occur exactly once) in a copy of the working
tree and runs the test files that cover that code; the mutation is *caught* when pytest fails. The
same files are first run unmutated, so a failure is the mutation's. Exit status 1 when any mutation
survives. ``tests/test_mutation_list.py`` checks in ``make test`` that every mutation still applies
to the current source, so the list cannot rot silently.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` by ``new`` in ``path`` (relative to the repository); ``tests`` must then fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "all_reduce_mean_broadcasts",  # rank 0's codebook statistics instead of the ranks' mean
        "codecplatform/quantizers/distributed.py",
        "        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)\n        tensor.div_(dist.get_world_size())",
        "        dist.broadcast(tensor, src=0)",
        ("tests/quantizers/test_distributed_quantizers.py",),
    ),
    Mutation(
        "all_reduce_sum_is_local",  # usage counts of the factorized quantizer stay per rank
        "codecplatform/quantizers/distributed.py",
        "        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)\n    return tensor",
        "        pass\n    return tensor",
        ("tests/quantizers/test_distributed_quantizers.py",),
    ),
    Mutation(
        "ema_ignores_new_sums",  # the EMA codebook never moves toward the data
        "codecplatform/quantizers/ema_codebook.py",
        "self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)",
        "self.embed_avg.mul_(self.decay)",
        ("tests/quantizers/test_ema_codebook.py", "tests/quantizers/test_ema_residual.py"),
    ),
    Mutation(
        "residual_not_subtracted",  # every stage quantizes the input again
        "codecplatform/quantizers/residual.py",
        "        residual = residual - q\n",
        "        residual = residual\n",
        ("tests/quantizers",),
    ),
    Mutation(
        "no_straight_through",  # the encoder gets no gradient through the EMA quantizer
        "codecplatform/quantizers/ema_residual.py",
        "z_q = z + (run.z_q - z).detach()",
        "z_q = run.z_q.detach()",
        ("tests/quantizers",),
    ),
    Mutation(
        "factorized_commitment_detached",  # the commitment loss no longer pulls the encoder
        "codecplatform/quantizers/factorized.py",
        'commit = F.mse_loss(z_e, e_k.detach(), reduction="none")',
        'commit = F.mse_loss(z_e.detach(), e_k.detach(), reduction="none")',
        ("tests/quantizers/test_factorized.py",),
    ),
    Mutation(
        "per_batch_choice_unseeded",  # ranks draw different codebook counts
        "codecplatform/quantizers/dropout.py",
        "pick = int(torch.randint(len(n_q_choices), (1,), generator=generator))",
        "pick = int(torch.randint(len(n_q_choices), (1,)))",
        ("tests/quantizers/test_dropout_policies.py",),
    ),
    Mutation(
        "hinge_fake_term_sign",  # the discriminator is pushed to call fakes real
        "codecplatform/losses/adversarial.py",
        "        return torch.relu(1 + logits).mean()",
        "        return torch.relu(1 - logits).mean()",
        ("tests/losses/test_adversarial.py",),
    ),
    Mutation(
        "balancer_ignores_gradient_norms",  # weights no longer set the gradient shares
        "codecplatform/losses/balancer.py",
        "scale = self.total_norm * weights[name] / total_weight / (average + self.epsilon)",
        "scale = self.total_norm * weights[name] / total_weight",
        ("tests/losses/test_balancer.py",),
    ),
    Mutation(
        "mel_loss_without_log",  # the log of the mel spectrogram dropped
        "codecplatform/losses/reconstruction.py",
        "            mel_x = safe_log(mel_x, self.clamp_eps, self.log_base)\n",
        "",
        ("tests/losses/test_reconstruction.py",),
    ),
    Mutation(
        "discriminator_never_steps",  # the D loss is computed but its optimizer never steps
        "codecplatform/lightning/gan_step.py",
        "                module.manual_backward(d_loss)\n                d_opt.step()\n",
        "                module.manual_backward(d_loss)\n",
        ("tests/lightning/test_gan_step.py",),
    ),
    Mutation(
        "adversarial_loss_dropped",  # the generator ignores the discriminator
        "codecplatform/lightning/gan_step.py",
        "losses[ADVERSARIAL] = self.gan_loss.generator_loss(fake.logits)",
        "losses[ADVERSARIAL] = 0.0 * self.gan_loss.generator_loss(fake.logits)",
        ("tests/lightning/test_gan_step.py",),
    ),
    Mutation(
        "payload_crc_unchecked",  # a corrupted payload decodes silently
        "codecplatform/bitstream.py",
        "    if zlib.crc32(payload) != payload_crc:",
        "    if False:",
        ("tests/test_bitstream.py",),
    ),
    Mutation(
        "sampler_seek_restarts",  # a resumed run draws the first batches again
        "datamodules/sampling.py",
        "            self.streams[name].position = total",
        "            self.streams[name].position = 0",
        ("tests/datamodules/test_sampling.py",),
    ),
    Mutation(
        "random_states_not_restored",  # a resumed run replaces dead codes with other vectors
        "codecplatform/lightning/base.py",
        "        if states is not None:\n            set_rng_states(states)",
        "        pass",
        ("tests/lightning/test_resume_state.py",),
    ),
    Mutation(
        "generator_ema_never_updated",  # evaluation runs with the initial weights
        "codecplatform/lightning/gan_codec.py",
        "        update_ema_(self.codec_ema, self.codec, weight)",
        "        pass",
        ("tests/lightning/test_generator_ema.py",),
    ),
    Mutation(
        "mucodec_flow_ignores_codes",  # the DiT is conditioned on zeros: any track's codes decode alike
        "codecplatform/mucodec/flow.py",
        "        return torch.where(valid, h, empty)",
        "        return torch.where(valid, torch.zeros_like(h), empty)",
        ("tests/benchmarks/test_mucodec_tiny_end_to_end.py",),
    ),
)


def apply(mutation: Mutation, root: Path) -> str:
    """Write the mutated source into ``root``; returns the original text (to restore)."""
    path = root / mutation.path
    source = path.read_text()
    count = source.count(mutation.old)
    if count != 1:
        raise ValueError(f"{mutation.name}: the text to replace occurs {count} times in {mutation.path}, not once")
    path.write_text(source.replace(mutation.old, mutation.new))
    return source


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, float]:
    """(pytest's exit status, seconds) for ``tests`` run in ``root``; status 124 on a time-out."""
    # PYTHONPATH: subprocesses the tests start (DDP ranks, CLI runs) import the mutated copy too,
    # not the editable install of the checkout
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        status = done.returncode
    except subprocess.TimeoutExpired:
        status = 124
    return status, time.perf_counter() - start


def copy_tree(dest: Path) -> Path:
    """The files git knows (tracked and untracked-not-ignored) copied to ``dest``, with the venv linked."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if (ROOT / ".venv").exists():
        (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="names of the mutations to run (default: all)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"no mutation named {sorted(unknown)}; known: {[m.name for m in MUTATIONS]}")
    survived = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        root = copy_tree(Path(tmp))
        print("| mutation | file | tests | unmutated | mutated | verdict |\n|---|---|---|---|---|---|")
        for mutation in chosen:
            clean, _ = run_tests(root, mutation.tests, args.timeout)
            original = apply(mutation, root)
            try:
                status, seconds = run_tests(root, mutation.tests, args.timeout)
            finally:
                (root / mutation.path).write_text(original)
            caught = clean == 0 and status != 0
            if not caught:
                survived.append(mutation.name)
            verdict = "caught" if caught else ("SURVIVED" if clean == 0 else "tests fail unmutated")
            print(
                f"| {mutation.name} | {mutation.path} | {' '.join(mutation.tests)} | exit {clean} | "
                f"exit {status} ({seconds:.0f} s) | {verdict} |",
                flush=True,
            )
    tail = f"; survived: {survived}" if survived else ""
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutations caught{tail}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
