"""The LightningModules that train and evaluate each MuCodec stage."""
