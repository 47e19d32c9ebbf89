from codecplatform.checkpoints.dac import convert_dac_state_dict, dac_codec_config, import_dac  # noqa: F401
from codecplatform.checkpoints.encodec import convert_encodec_state_dict, encodec_codec_config, import_encodec  # noqa: F401
