"""The AST student: shapes, the released checkpoint layout, ImageNet / AudioSet initialisation, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from student import MODEL_SIZES, ASTModel, StudentError, create_ast
from student.weights import adapt_pos_embed

SIZES = {"tiny224": 192, "small224": 384, "base224": 768, "base384": 768}


def released_layout(dim: int = 768, classes: int = 527, patches: int = 1212) -> dict[str, tuple[int, ...]]:
    """Key → shape of a released AST checkpoint (nn.DataParallel state dict), written out from its documentation."""
    keys = {
        "module.v.cls_token": (1, 1, dim), "module.v.dist_token": (1, 1, dim),
        "module.v.pos_embed": (1, patches + 2, dim),
        "module.v.patch_embed.proj.weight": (dim, 1, 16, 16), "module.v.patch_embed.proj.bias": (dim,),
        "module.v.norm.weight": (dim,), "module.v.norm.bias": (dim,),
        "module.v.head.weight": (1000, dim), "module.v.head.bias": (1000,),
        "module.v.head_dist.weight": (1000, dim), "module.v.head_dist.bias": (1000,),
        "module.mlp_head.0.weight": (dim,), "module.mlp_head.0.bias": (dim,),
        "module.mlp_head.1.weight": (classes, dim), "module.mlp_head.1.bias": (classes,),
    }
    for i in range(12):
        p = f"module.v.blocks.{i}."
        keys.update({
            p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
            p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
            p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
            p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
            p + "mlp.fc1.weight": (4 * dim, dim), p + "mlp.fc1.bias": (4 * dim,),
            p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,),
        })
    return keys


def meta_model(*args, **kwargs) -> ASTModel:
    """A model without memory behind it: enough for shapes and keys, costs nothing to build."""
    with torch.device("meta"):
        return ASTModel(*args, **kwargs)


@pytest.mark.parametrize("stride,patches", [(10, 1212), (12, 850), (14, 657), (16, 512)])
def test_base384_matches_the_released_key_layout_for_every_stride(stride: int, patches: int) -> None:
    model = meta_model("base384", 527, 128, 1024, stride, stride)
    expected = {k.removeprefix("module."): v for k, v in released_layout(patches=patches).items()}
    assert len(expected) == 159
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.num_patches == patches


def test_parameter_counts_match_the_published_model() -> None:
    counts = {size: sum(p.numel() for p in meta_model(size).parameters()) for size in ("tiny224", "small224", "base384")}
    assert counts == {"tiny224": 6_109_663, "small224": 22_833_631, "base384": 88_132_063}


@pytest.mark.parametrize("size", list(MODEL_SIZES))
@pytest.mark.parametrize("frames,fstride,tstride,grid", [(1024, 10, 10, (12, 101)), (998, 10, 10, (12, 99)),
                                                         (128, 10, 10, (12, 12)), (512, 16, 12, (8, 42))])
def test_output_shape_for_every_size_and_length(size: str, frames: int, fstride: int, tstride: int,
                                                 grid: tuple[int, int]) -> None:
    model = meta_model(size, 35, 128, frames, fstride, tstride)
    assert (model.f_dim, model.t_dim) == grid
    assert model.v.pos_embed.shape == (1, grid[0] * grid[1] + 2, SIZES[size])
    logits = model(torch.empty(3, frames, 128, device="meta"))
    assert logits.shape == (3, 35)


@pytest.mark.parametrize("frames", [128, 200])
def test_tiny_model_runs_for_real(frames: int) -> None:
    torch.manual_seed(0)
    model = create_ast("tiny224", num_classes=7, input_tdim=frames).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, frames, 128))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


def test_forward_pools_class_and_distillation_tokens_like_timm_would() -> None:
    """Our forward = timm's own VisionTransformer.forward_features + AST's head, bit for bit."""
    torch.manual_seed(0)
    model = create_ast("tiny224", num_classes=5, input_tdim=128).eval()
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        tokens = model.v.forward_features(x.unsqueeze(1).transpose(2, 3))
        expected = model.mlp_head((tokens[:, 0] + tokens[:, 1]) / 2)
        assert torch.equal(model(x), expected)


def _released_style_file(path: Path, model: ASTModel) -> Path:
    torch.save(torch.nn.DataParallel(model).state_dict(), path)
    return path


def test_released_checkpoint_loads_strictly_and_reproduces_the_logits(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = create_ast("tiny224", num_classes=527, input_tdim=128).eval()
    path = _released_style_file(tmp_path / "audioset_10_10_0.4593.pth", source)
    assert all(k.startswith("module.") for k in torch.load(path, weights_only=True))
    loaded = create_ast("tiny224", num_classes=527, input_tdim=128, ast_checkpoint=path).eval()
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_finetuning_start_keeps_backbone_adapts_grid_and_builds_a_fresh_head(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = create_ast("tiny224", num_classes=527, input_tdim=256)  # grid 12 × 25
    path = _released_style_file(tmp_path / "as.pth", source)
    model = create_ast("tiny224", num_classes=10, input_tdim=128, ast_checkpoint=path)  # grid 12 × 12
    assert model.mlp_head[1].weight.shape == (10, 192)
    assert torch.equal(model.v.blocks[3].mlp.fc1.weight, source.v.blocks[3].mlp.fc1.weight)
    old = source.v.pos_embed.detach()[:, 2:].transpose(1, 2).reshape(1, 192, 12, 25)
    expected = old[:, :, :, 12 - 6:12 + 6].reshape(1, 192, 144).transpose(1, 2)  # centre columns
    assert torch.equal(model.v.pos_embed.detach()[:, 2:], expected)
    assert torch.equal(model.v.pos_embed.detach()[:, :2], source.v.pos_embed.detach()[:, :2])

    longer = create_ast("tiny224", num_classes=527, input_tdim=400, ast_checkpoint=path)  # 12 × 39: interpolated
    grid = F.interpolate(old, size=(12, 39), mode="bilinear").reshape(1, 192, -1).transpose(1, 2)
    assert torch.allclose(longer.v.pos_embed.detach()[:, 2:], grid)


def test_checkpoint_of_another_stride_is_recognised(tmp_path: Path) -> None:
    source = create_ast("tiny224", num_classes=527, input_tdim=256, fstride=12, tstride=12)  # 10 × 21
    path = _released_style_file(tmp_path / "as12.pth", source)
    model = create_ast("tiny224", num_classes=527, input_tdim=256, ast_checkpoint=path)  # 12 × 25
    old = source.v.pos_embed.detach()[:, 2:].transpose(1, 2).reshape(1, 192, 10, 21)
    expected = F.interpolate(old, size=(10, 25), mode="bilinear")
    expected = F.interpolate(expected, size=(12, 25), mode="bilinear").reshape(1, 192, -1).transpose(1, 2)
    assert torch.allclose(model.v.pos_embed.detach()[:, 2:], expected)


def test_imagenet_init_sums_the_rgb_kernel_and_cuts_or_interpolates_the_grid(tmp_path: Path) -> None:
    torch.manual_seed(3)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    path = tmp_path / "deit_tiny.pth"
    torch.save({"model": deit.state_dict()}, path)  # the DeiT release wraps the weights in "model"
    grid = deit.pos_embed.detach()[:, 2:].transpose(1, 2).reshape(1, 192, 14, 14)

    short = create_ast("tiny224", num_classes=3, input_tdim=128, imagenet_weights=path)  # 12 × 12: cut
    assert torch.equal(short.v.patch_embed.proj.weight, deit.patch_embed.proj.weight.sum(1, keepdim=True))
    assert torch.equal(short.v.patch_embed.proj.bias, deit.patch_embed.proj.bias)
    assert torch.equal(short.v.pos_embed[:, 2:], grid[:, :, 1:13, 1:13].reshape(1, 192, -1).transpose(1, 2))
    assert torch.equal(short.v.pos_embed[:, :2], deit.pos_embed[:, :2])
    assert torch.equal(short.v.blocks[11].attn.qkv.weight, deit.blocks[11].attn.qkv.weight)

    long = create_ast("tiny224", num_classes=3, input_tdim=300, imagenet_weights=path)  # 12 × 29: time interpolated
    expected = F.interpolate(grid, size=(14, 29), mode="bilinear")[:, :, 1:13]
    assert torch.equal(long.v.pos_embed[:, 2:], expected.reshape(1, 192, -1).transpose(1, 2))


def test_checkpoint_of_another_size_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _released_style_file(tmp_path / "small.pth", create_ast("small224", input_tdim=128))
    with pytest.raises(StudentError, match="small.pth"):
        create_ast("tiny224", input_tdim=128, ast_checkpoint=path)


def test_checkpoint_missing_keys_is_refused(tmp_path: Path) -> None:
    state = create_ast("tiny224", input_tdim=128).state_dict()
    del state["v.blocks.5.mlp.fc2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(StudentError, match=r"broken.pth.*missing keys.*blocks\.5\.mlp\.fc2\.weight"):
        create_ast("tiny224", input_tdim=128, ast_checkpoint=path)


def test_non_checkpoint_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(StudentError, match="notes.pth"):
        create_ast("tiny224", input_tdim=128, ast_checkpoint=tmp_path / "notes.pth")
    with pytest.raises(StudentError, match="not found"):
        create_ast("tiny224", input_tdim=128, ast_checkpoint=tmp_path / "absent.pth")
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False)  # not distilled: 1 prefix token
    torch.save(deit.state_dict(), tmp_path / "plain_deit.pth")
    with pytest.raises(StudentError, match="distilled"):
        create_ast("tiny224", input_tdim=128, imagenet_weights=tmp_path / "plain_deit.pth")


def test_unknown_size_and_too_short_inputs_are_clear_errors() -> None:
    with pytest.raises(StudentError, match="unknown AST size 'huge'.*tiny224"):
        create_ast("huge")
    with pytest.raises(StudentError, match="input_tdim = 10 frames is smaller than one 16×16 patch"):
        meta_model("tiny224", input_tdim=10)
    with pytest.raises(StudentError, match="input_fdim = 8 mel bins"):
        meta_model("tiny224", input_fdim=8)
    with pytest.raises(StudentError, match="fstride"):
        meta_model("tiny224", fstride=0)


def test_wrong_input_shape_names_the_expected_one() -> None:
    model = meta_model("tiny224", input_tdim=128)
    with pytest.raises(StudentError, match=r"\(batch, 128 frames, 128 mel bins\), got \(2, 128, 64\)"):
        model(torch.empty(2, 128, 64, device="meta"))
    with pytest.raises(StudentError, match="got \\(2, 100, 128\\)"):
        model(torch.empty(2, 100, 128, device="meta"))
    with pytest.raises(StudentError, match="got \\(128, 128\\)"):
        model(torch.empty(128, 128, device="meta"))


def test_pos_embed_adaptation_keeps_prefix_and_identity_on_same_grid() -> None:
    pos = torch.randn(1, 2 + 12 * 101, 8)
    assert torch.equal(adapt_pos_embed(pos, (12, 101), (12, 101)), pos)
