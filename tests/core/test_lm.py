"""The output module, the character LM and the paper's parameter count."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from hmrnn.core import CharLM, OutputModule, count_parameters


def test_output_module_is_the_gated_sum_of_layers() -> None:
    torch.manual_seed(0)
    K, H, E = 3, 4, 5
    module = OutputModule(K, H, E).double()
    hidden = torch.randn(7, 2, K, H).double()
    out = module(hidden)
    flat = hidden.reshape(7, 2, K * H)
    want = torch.zeros(7, 2, E).double()
    for l in range(K):
        g = torch.sigmoid(flat @ module.gate.weight[l])  # w^l . [h^1; ...; h^K]
        W_l = module.embed.weight[:, l * H : (l + 1) * H]  # W_l^e
        want = want + g[..., None] * (hidden[:, :, l] @ W_l.t())
    torch.testing.assert_close(out, torch.relu(want))
    assert module.layer_gates(hidden).shape == (7, 2, K)


def test_char_lm_loss_is_mean_nats_per_symbol() -> None:
    torch.manual_seed(0)
    model = CharLM(11, 16, 3, embedding_dim=8, output_size=12)
    tokens = torch.randint(0, 11, (10, 3))
    targets = torch.randint(0, 11, (10, 3))
    out = model(tokens, targets)
    assert out.logits.shape == (10, 3, 11) and out.boundaries.shape == (10, 3, 3)
    nll = -F.log_softmax(out.logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(out.loss, nll)
    # an untrained model is close to uniform: about log(V) nats
    assert abs(out.loss.item() - torch.log(torch.tensor(11.0)).item()) < 0.3
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_paper_ptb_model_has_about_8_4_million_parameters() -> None:
    model = CharLM(50, 512, 3, embedding_dim=128, output_size=512)
    # layer 1: 2049 x (128 + 512 + 512 + 1); layer 2: 2049 x (3 * 512 + 1); layer 3 (no z row, no
    # top-down): 2048 x (2 * 512 + 1); embedding 50 x 128; gates 3 x 1536; W^e 512 x 1536;
    # softmax 512 x 50 + 50
    want = (
        2049 * 1153 + 2049 * 1537 + 2048 * 1025 + 50 * 128 + 3 * 1536 + 512 * 1536 + 512 * 50 + 50
    )
    assert count_parameters(model) == want == 8_434_100


def test_text8_model_has_about_36_million_parameters() -> None:
    model = CharLM(27, 1024, 3, embedding_dim=128, output_size=2048)
    assert 35e6 < count_parameters(model) < 37e6


def test_bad_vocab_and_tokens() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        CharLM(1, 8)
    with pytest.raises(ValueError, match="tokens must be 2-d"):
        CharLM(5, 8)(torch.zeros(3, dtype=torch.long))


def test_core_imports_no_training_dependency() -> None:
    """DESIGN.md's dependency rule: hmrnn.core needs torch alone."""
    code = (
        "import sys, hmrnn.core\n"
        "bad = {'lightning', 'pytorch_lightning', 'torchmetrics', 'wandb', 'omegaconf'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
