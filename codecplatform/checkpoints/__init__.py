from codecplatform.checkpoints.dac import convert_dac_state_dict, dac_codec_config, import_dac  # noqa: F401
