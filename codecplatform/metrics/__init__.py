"""Evaluation metrics as torchmetrics ``Metric``s with summed states, so DDP reduces them correctly.

``reconstruction``: MelDistance, STFTDistance (DAC definitions), SISDR; Resampled (DAC's 44.1 kHz evaluation rate).
``perceptual``: ViSQOL (audio mode 48 kHz / speech mode 16 kHz), PESQ (wide-band), STOI.
``classical``: Opus and MP3 (PyAV) as reference rows, scored with the same metrics.
``dnsmos``: DNSMOS P.835 (SIG/BAK/OVRL) and P.808 (speechmos' ONNX models).
``codebook``: CodebookUsage and ``codebook_statistics`` (usage, entropy, perplexity, dead codes, efficiency).
"""
