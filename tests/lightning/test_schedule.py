from codecplatform.lightning.schedule import DiscriminatorSchedule


def test_schedule_is_deterministic_and_respects_start_period_probability():
    a = DiscriminatorSchedule(start_step=10, period=2, probability=2 / 3, seed=3)
    b = DiscriminatorSchedule(start_step=10, period=2, probability=2 / 3, seed=3)
    decisions = [a.should_update(i) for i in range(2000)]
    assert decisions == [b.should_update(i) for i in range(2000)]  # same on every rank / resume
    assert not any(decisions[:10])
    assert not any(decisions[11::2])  # off-period batches never update
    rate = sum(decisions[10::2]) / len(decisions[10::2])
    assert abs(rate - 2 / 3) < 0.05
    other_seed = [DiscriminatorSchedule(10, 2, 2 / 3, seed=4).should_update(i) for i in range(2000)]
    assert other_seed != decisions
    assert not a.is_active(9) and a.is_active(10)
