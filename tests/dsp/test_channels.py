import numpy as np
import pytest

from codecplatform.dsp.channels import map_channels


def test_map_channels_repeats_mono_averages_to_mono_and_keeps_the_first():
    mono = np.arange(4, dtype=np.float32)[None]
    assert np.array_equal(map_channels(mono, 2, "m"), np.stack([mono[0], mono[0]]))
    stereo = np.array([[1.0, 3.0], [3.0, 5.0]], np.float32)
    assert np.array_equal(map_channels(stereo, 1, "s"), np.array([[2.0, 4.0]], np.float32))
    three = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(map_channels(three, 2, "t"), three[:2])
    assert map_channels(stereo, 2, "s") is stereo


def test_map_channels_refuses_to_invent_channels_and_names_the_file():
    with pytest.raises(ValueError, match=r"song\.wav has 2 channels, cannot make 3"):
        map_channels(np.zeros((2, 5), np.float32), 3, "song.wav")
