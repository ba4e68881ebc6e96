"""Model anatomy helpers that every family uses."""

from __future__ import annotations

import torch

from cascade_kd.students.anatomy import pca_axes


def test_pca_axes_are_the_svd_axes_with_a_fixed_sign():
    torch.manual_seed(0)
    # a spectrum with clear gaps, so that each axis is well defined; rows in many chunks
    scales = torch.tensor([50.0, 20.0, 10.0, 5.0, 2.0, 1.0])
    basis, _ = torch.linalg.qr(torch.randn(24, 6))
    rows = (torch.randn(70_000, 6) * scales) @ basis.T + 3.0 + 0.01 * torch.randn(70_000, 24)
    mean, axes = pca_axes(rows, 4)
    assert torch.allclose(mean, rows.mean(0, keepdim=True))
    _, _, v = torch.linalg.svd(rows - rows.mean(0, keepdim=True), full_matrices=False)
    cos = (axes * v[:4].T).sum(0)
    assert torch.allclose(cos.abs(), torch.ones(4), atol=1e-5)
    assert torch.allclose(axes.T @ axes, torch.eye(4), atol=1e-5)
    # the sign rule: each axis's largest entry is positive, whatever the input's sign
    assert (axes.gather(0, axes.abs().argmax(0, keepdim=True)) > 0).all()
    _, flipped = pca_axes(-rows, 4)
    assert torch.allclose(flipped, axes, atol=1e-5)
