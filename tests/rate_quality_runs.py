"""MLflow runs of two codec families with per-bitrate test metrics, logged directly with MlflowClient
(the names ``codecplatform test`` logs, see codecplatform/lightning/evaluation.py): fast stand-ins for
trained runs in the compare, notebook and UI tests."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from codecplatform.compare import prepare_experiment

# name -> (tags, {kbps: mel_distance}); the other metrics are derived from mel_distance.
RUNS = {
    "encodec-small": (
        {"family": "encodec", "sample_rate": "24000", "max_kbps": "24", "frame_rate": "75"},
        {1.5: 1.9, 3: 1.6, 6: 1.3, 12: 1.1, 24: 0.95},
    ),
    "encodec-large": (
        {"family": "encodec", "sample_rate": "24000", "max_kbps": "24", "frame_rate": "75"},
        {1.5: 1.7, 3: 1.4, 6: 1.15, 12: 0.98, 24: 0.85},
    ),
    "dac-24khz": (
        {"family": "dac", "sample_rate": "24000", "max_kbps": "24", "frame_rate": "75"},
        {0.75: 1.8, 1.5: 1.5, 3: 1.2, 6: 0.95, 24: 0.7},
    ),
    "dac-44khz": (
        {"family": "dac", "sample_rate": "44100", "max_kbps": "7.75", "frame_rate": "86.13"},
        {0.861: 1.7, 2.584: 1.25, 7.75: 0.8},
    ),
}
ENTROPY_CODED = "dac-24khz"  # logs test/<kbps>kbps/effective_kbps (entropy coding ran)
NO_PER_BITRATE = "encodec-fit-only"  # a run with only training/validation metrics


def log_runs(uri: str, experiment: str = "codecplatform", visqol: bool = True) -> dict[str, str]:
    """Create (and prepare, like the logger) ``experiment`` in ``uri`` and log :data:`RUNS` plus
    :data:`NO_PER_BITRATE` into it -> run name -> run id."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    prepare_experiment(client, experiment_id)
    ids = {}
    for name, (tags, mel) in RUNS.items():
        run = client.create_run(experiment_id, run_name=name, tags={**tags, "channels": "1", "stage": "test"})
        run_id = ids[name] = run.info.run_id
        for kbps, value in mel.items():
            prefix = f"test/{round(kbps, 3):g}kbps"
            client.log_metric(run_id, f"{prefix}/mel_distance", value)
            client.log_metric(run_id, f"{prefix}/stft_distance", value * 2.1)
            client.log_metric(run_id, f"{prefix}/si_sdr", 12.0 - 5.0 * value)
            client.log_metric(run_id, f"{prefix}/codebook_efficiency", 0.5 + 0.1 * value)
            if visqol:
                client.log_metric(run_id, f"{prefix}/visqol_audio", 5.0 - value)
            if name == ENTROPY_CODED:
                client.log_metric(run_id, f"{prefix}/effective_kbps", 0.8 * kbps)
        full = mel[max(mel)]
        for key, value in {"mel_distance": full, "si_sdr": 12.0 - 5.0 * full}.items():
            client.log_metric(run_id, f"test/{key}", value)
        client.log_metric(run_id, "val/mel_distance", full + 0.05)
        client.set_terminated(run_id)
    run = client.create_run(experiment_id, run_name=NO_PER_BITRATE, tags={"family": "encodec", "sample_rate": "24000"})
    client.log_metric(run.info.run_id, "val/mel_distance", 2.0)
    client.set_terminated(run.info.run_id)
    ids[NO_PER_BITRATE] = run.info.run_id
    return ids
