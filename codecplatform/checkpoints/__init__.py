"""Checkpoints: :mod:`~codecplatform.checkpoints.io` reads every checkpoint file (``weights_only``,
one-line errors); :mod:`~codecplatform.checkpoints.dac`, :mod:`~codecplatform.checkpoints.encodec`,
:mod:`~codecplatform.checkpoints.muffin`, :mod:`~codecplatform.checkpoints.spectrostream` and
:mod:`~codecplatform.checkpoints.mucodec` import official weights (the base class in
:mod:`~codecplatform.checkpoints.base`, the ``--family`` names in :data:`codecplatform.checkpoints.cli.IMPORTERS`).

Nothing is imported here: reading a checkpoint (what the models need) must not load the importers,
which build models.
"""
