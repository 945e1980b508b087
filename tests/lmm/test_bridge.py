import torch

from lmm.config import BridgeConfig
from lmm.models.bridge import CausalBridge


def make_bridge(**kw):
    torch.manual_seed(0)
    return CausalBridge(BridgeConfig(num_queries=6, width=32, depth=2, heads=4, **kw), vision_width=24,
                        out_width=40).eval()


def test_output_shape_and_random_queries():
    bridge = make_bridge()
    out = bridge(torch.randn(3, 17, 24))
    assert out.shape == (3, 6, 40)
    assert 0.01 < bridge.queries.std().item() < 0.03  # N(0, 0.02) init


def test_queries_are_causal():
    """Changing query j changes outputs >= j only."""
    bridge = make_bridge()
    visual = torch.randn(2, 17, 24)
    before = bridge(visual)
    with torch.no_grad():
        bridge.queries[0, 3] += 1.0
    after = bridge(visual)
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert not torch.allclose(before[:, 3:], after[:, 3:], atol=1e-3)


def test_every_query_sees_every_visual_token():
    bridge = make_bridge()
    visual = torch.randn(1, 17, 24)
    before = bridge(visual)
    visual[0, -1] += torch.randn(24)  # the last visual token
    after = bridge(visual)
    assert (before - after).abs().amax(dim=-1).min() > 1e-5
