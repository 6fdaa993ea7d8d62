"""The EMA of the weights: VDVAE's constant rate, and the warm-up that lets early weights fade."""

import torch
from torch.optim.swa_utils import AveragedModel

from main.systems.common import ema_update


def run_ema(rate: float, warmup: bool, values: list[float]) -> float:
    model = torch.nn.Linear(1, 1, bias=False)
    average = AveragedModel(model, multi_avg_fn=ema_update(rate, warmup), use_buffers=True)
    for v in values:
        model.weight.data.fill_(v)
        average.update_parameters(model)
    return average.module.weight.item()


def test_constant_rate_matches_the_recurrence():
    values = [float(i % 7) for i in range(50)]
    expected = values[0]  # AveragedModel copies the weights on the first update
    for v in values[1:]:
        expected = 0.9 * expected + 0.1 * v
    assert abs(run_ema(0.9, False, values) - expected) < 1e-5


def test_warmup_forgets_the_initial_weights_faster():
    values = [100.0] + [1.0] * 2000  # a bad start, then the weights training settles on
    with_warmup, without = run_ema(0.999, True, values), run_ema(0.999, False, values)
    assert abs(without - (1 + 99 * 0.999**2000)) < 1e-3  # 13.5% of the bad start remains
    assert abs(with_warmup - 1.0) < 0.05


def test_warmup_reaches_the_configured_rate():
    values = [0.0] * 200 + [1.0]
    # after 200 updates (1 + n) / (10 + n) = 0.957 > 0.9, so the last step uses the rate itself
    assert abs(run_ema(0.9, True, values) - 0.1) < 1e-6
