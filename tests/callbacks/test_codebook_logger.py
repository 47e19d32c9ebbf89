"""CodebookUsageLogger: per-codebook scalars every validation, heatmap + counts JSON every N, and
the counts equal a direct count of the validation codes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import artifact_files, download, fit_tiny, metric_history, spread_codebooks
from matplotlib.image import imread
from test_gan_codec import NoiseAudio, tiny_module

from callbacks.codebook_logger import CodebookUsageLogger, metric_values, usage_statistics
from codecplatform.lightning.gan_codec import GANCodecModule


def direct_counts(codec, val_batches: int, size: int) -> torch.Tensor:
    """(K, size) counts of the codes of the validation data, batch by batch as the trainer sees it."""
    codec.eval()
    data = NoiseAudio(n=2 * val_batches)
    codes = [codec.encode(torch.stack([data[i], data[i + 1]])).codes for i in range(0, len(data), 2)]
    codes = torch.cat(codes)  # (B, K, T')
    return torch.stack([torch.bincount(codes[:, k].flatten(), minlength=size) for k in range(codes.shape[1])])


def test_counts_json_heatmap_and_history_in_mlflow(mlflow_logger, tmp_path):
    torch.manual_seed(0)
    module = spread_codebooks(tiny_module())
    callback = CodebookUsageLogger(every_n_validations=2)
    fit_tiny([callback], mlflow_logger, tmp_path, batches=2, val_every=1, val_batches=2, module=module)

    # artifacts at the second validation only
    assert artifact_files(mlflow_logger, "codebooks") == [
        "codebooks/val_0000002/counts.json",
        "codebooks/val_0000002/usage.png",
    ]
    folder = download(mlflow_logger, "codebooks/val_0000002", tmp_path / "dl")
    result = json.loads((folder / "counts.json").read_text())
    image = imread(folder / "usage.png")
    assert image.ndim == 3 and min(image.shape[:2]) > 100

    # the weights after the last batch are those of the last validation: count directly
    expected = direct_counts(module.codec, val_batches=2, size=16)
    assert result["batches"] == 2
    assert [cb["codebook"] for cb in result["codebooks"]] == [0, 1]
    assert [cb["counts"] for cb in result["codebooks"]] == expected.tolist()
    assert result["frames"] == 4 * 256  # 4 examples of 2048 samples, hop 8
    assert sum(cb["counts"][0] > 0 for cb in result["codebooks"]) >= 1
    used = [int((row > 0).sum()) for row in expected]
    assert min(used) > 3, "spread codebooks should use several entries"
    for cb, row, n_used in zip(result["codebooks"], expected, used):
        p = row[row > 0].double() / row.sum()
        entropy = float(-(p * p.log2()).sum())
        assert cb["size"] == 16 and cb["dead_codes"] == 16 - n_used
        assert cb["utilization"] == pytest.approx(n_used / 16)
        assert cb["entropy_bits"] == pytest.approx(entropy, abs=1e-5)
        assert cb["perplexity"] == pytest.approx(2**entropy, rel=1e-5)
    assert result["efficiency"] == pytest.approx(sum(cb["entropy_bits"] for cb in result["codebooks"]) / 8, rel=1e-6)

    # scalars at every validation; the last ones are the JSON's numbers
    for k, cb in enumerate(result["codebooks"]):
        for name, key in (("entropy", "entropy_bits"), ("dead_codes", "dead_codes"), ("perplexity", "perplexity")):
            history = metric_history(mlflow_logger, f"val/codebook/{name}/{k}")
            assert len(history) == 2
            assert history[-1][1] == pytest.approx(cb[key], rel=1e-5)
    efficiency = metric_history(mlflow_logger, "val/codebook/efficiency")
    assert len(efficiency) == 2 and efficiency[-1][1] == pytest.approx(result["efficiency"], rel=1e-5)
    assert callback.validations == 2


def test_without_a_logger_files_go_under_the_log_dir(tmp_path):
    trainer = fit_tiny([CodebookUsageLogger(log_metrics=False)], False, tmp_path, batches=1)
    folder = tmp_path / "artifacts" / "codebooks" / "val_0000001"
    assert sorted(p.name for p in folder.iterdir()) == ["counts.json", "usage.png"]
    assert not any(key.startswith("val/codebook/") for key in trainer.callback_metrics)


def test_codebooks_of_different_sizes():
    # codebook 0 has 4 entries, codebook 1 has 8: counts padded to (2, 8)
    counts = torch.tensor([[3, 0, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]])
    stats = usage_statistics(counts, [4, 8])
    assert stats["dead_codes"].tolist() == [2, 4]
    assert stats["utilization"].tolist() == [0.5, 0.5]
    h0 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert stats["entropy"].tolist() == pytest.approx([h0, 2.0])
    assert stats["efficiency"] == pytest.approx((h0 + 2.0) / (2 + 3))
    values = metric_values(stats)
    assert values["val/codebook/dead_codes/1"] == 4 and values["val/codebook/efficiency"] == stats["efficiency"]
    assert sorted(values) == sorted(
        ["val/codebook/efficiency"]
        + [
            f"val/codebook/{name}/{k}"
            for name in ("entropy", "perplexity", "dead_codes", "utilization")
            for k in (0, 1)
        ]
    )
    with pytest.raises(ValueError, match="do not fit"):
        usage_statistics(counts, [4, 16])


def test_a_module_without_codec_is_named():
    from lightning.pytorch import LightningModule

    callback = CodebookUsageLogger()

    class Trainerish:
        sanity_checking = False

    with pytest.raises(AttributeError, match="CodebookUsageLogger needs .* `codec`"):
        callback.on_validation_epoch_start(Trainerish(), LightningModule())


class CodesNotReturned(GANCodecModule):
    """A module whose validation_step returns nothing: the callback must encode the batch itself."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("returns_codes", [True, False], ids=["module-codes", "own-encode"])
def test_counts_the_modules_codes_without_encoding_again(tmp_path, returns_codes):
    torch.manual_seed(0)
    module = spread_codebooks(tiny_module())
    if not returns_codes:
        module.__class__ = CodesNotReturned
    calls = []
    encode = module.codec.encode
    module.codec.encode = lambda *args, **kwargs: calls.append(1) or encode(*args, **kwargs)
    fit_tiny([CodebookUsageLogger(log_metrics=False)], False, tmp_path, batches=1, val_batches=2, module=module)
    # GANCodecModule encodes each of the 2 validation batches once; without its codes the callback
    # encodes each batch a second time
    assert len(calls) == (2 if returns_codes else 4)
    module.codec.encode = encode
    result = json.loads((tmp_path / "artifacts" / "codebooks" / "val_0000001" / "counts.json").read_text())
    assert [cb["counts"] for cb in result["codebooks"]] == direct_counts(module.codec, 2, 16).tolist()
