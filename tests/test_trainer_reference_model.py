"""The ``seizure-transformer`` preset against the reference code (keruiwu/SeizureTransformer,
``time_step_level/model.py``; ``wu_2025/`` loads its released ``model.pth`` into the same class): parameter counts,
layer shapes, a CPU forward/backward, and ``--init-from`` a state dict in the reference's parameter names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from trainer_fixtures import real_cache

from trainer.fit import LAST, FitError, TrainConfig, fit, load_checkpoint
from trainer.model import PRESETS, build_model, count_parameters
from trainer.reference import ReferenceWeightsError, from_reference, load_initial_weights, to_reference

# Facts read from the reference's code (not its weights, which are not on this machine):
# filters 32, 64, 128, 256, 512; encoder kernels: the first five of 11, 9, 7, 7, 5, 5, 3; decoder kernels: that list
# reversed, first five (3, 5, 5, 7, 7), widths 512 -> 512 -> 256 -> 128 -> 64 -> 32; residual stack kernels
# 3, 3, 3, 3, 2, 3, 2 on 512 channels, BatchNorm1d(512, eps=1e-3) twice per block; 8 transformer layers, d_model 512,
# 4 heads, feed-forward 2048; final Conv1d(32, 1, 11, padding 5). Its forward pass uses 37,848,897 parameters with
# 19 input channels (the challenge model) and 37,848,545 with 18 (its training script's default, double banana).
REFERENCE_ENCODER = [(32, "C", 11), (64, 32, 9), (128, 64, 7), (256, 128, 7), (512, 256, 5)]
REFERENCE_DECODER = [(512, 512, 3), (256, 512, 5), (128, 256, 5), (64, 128, 7), (32, 64, 7)]
REFERENCE_RES_KERNELS = [3, 3, 3, 3, 2, 3, 2]
REFERENCE_PARAMETERS = {19: 37_848_897, 18: 37_848_545}


def reference_shapes(channels: int) -> dict[str, tuple[int, ...]]:
    """Every parameter (and BatchNorm statistic) of the reference model's forward pass, by its name there."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (out, inp, k) in enumerate(REFERENCE_ENCODER):
        shapes[f"encoder.convs.{i}.weight"] = (out, channels if inp == "C" else inp, k)
        shapes[f"encoder.convs.{i}.bias"] = (out,)
    for j, k in enumerate(REFERENCE_RES_KERNELS):
        for n in (1, 2):
            shapes[f"res_cnn_stack.members.{j}.conv{n}.weight"] = (512, 512, k)
            shapes[f"res_cnn_stack.members.{j}.conv{n}.bias"] = (512,)
            for stat in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"res_cnn_stack.members.{j}.norm{n}.{stat}"] = (512,)
            shapes[f"res_cnn_stack.members.{j}.norm{n}.num_batches_tracked"] = ()
    for layer in range(8):
        p = f"transformer_encoder.layers.{layer}."
        shapes.update({p + "self_attn.in_proj_weight": (1536, 512), p + "self_attn.in_proj_bias": (1536,),
                       p + "self_attn.out_proj.weight": (512, 512), p + "self_attn.out_proj.bias": (512,),
                       p + "linear1.weight": (2048, 512), p + "linear1.bias": (2048,),
                       p + "linear2.weight": (512, 2048), p + "linear2.bias": (512,),
                       p + "norm1.weight": (512,), p + "norm1.bias": (512,),
                       p + "norm2.weight": (512,), p + "norm2.bias": (512,)})
    for i, (out, inp, k) in enumerate(REFERENCE_DECODER):
        shapes[f"decoder_d.convs.{i}.weight"] = (out, inp, k)
        shapes[f"decoder_d.convs.{i}.bias"] = (out,)
    shapes["conv_d.weight"], shapes["conv_d.bias"] = (1, 32, 11), (1,)
    return shapes


@pytest.mark.parametrize("channels", [19, 18])
def test_parameter_count_is_the_reference_forward_pass(channels):
    model = build_model("seizure-transformer", in_channels=channels)
    assert count_parameters(model) == REFERENCE_PARAMETERS[channels]
    facts = reference_shapes(channels)
    assert sum(int(np.prod(s)) for name, s in facts.items()
               if not any(t in name for t in ("running_", "num_batches"))) == REFERENCE_PARAMETERS[channels]


@pytest.mark.parametrize("channels", [19, 18])
def test_layer_shapes_equal_the_reference(channels):
    ours = {k: tuple(v.shape) for k, v in to_reference(build_model("seizure-transformer", in_channels=channels)
                                                       .state_dict()).items()}
    assert ours == reference_shapes(channels)


def test_preset_constants():
    config = PRESETS["seizure-transformer"]
    model = build_model("seizure-transformer")
    assert config.block_kernels == tuple(REFERENCE_RES_KERNELS) and config.up_kernels == (3, 5, 5, 7, 7)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)} == {1e-3}
    assert model.positions.dropout.p == 0.1
    layer = model.transformer.layers[0]
    assert (layer.dropout.p, layer.self_attn.num_heads, layer.norm_first) == (0.1, 4, False)
    # base and tiny are unchanged (checkpoints written before the preset existed still load)
    assert count_parameters(build_model("base")) == 39_774_017
    assert PRESETS["base"].block_kernels == (3,) * 7 and PRESETS["base"].bn_eps == 1e-5


def test_cpu_forward_backward():
    torch.manual_seed(0)
    model = build_model("seizure-transformer")
    x, y = torch.randn(2, 19, 15360), torch.zeros(2, 15360)
    y[:, 4000:9000] = 1
    logits = model(x)
    assert logits.shape == (2, 15360) and torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def _reference_checkpoint(model: torch.nn.Module, path, *, prefix: str = "") -> None:
    """A state dict as the reference code saves it: its parameter names, the unused transformer layer copy
    (``transformer_encoder_layer.*``) and the positional table buffer (``position_encoding.pe``)."""
    state = to_reference(model.state_dict())
    unused = torch.nn.TransformerEncoderLayer(512, 4, 2048)
    state.update({f"transformer_encoder_layer.{k}": v for k, v in unused.state_dict().items()})
    state["position_encoding.pe"] = torch.zeros(6000, 1, 512)
    torch.save({prefix + k: v for k, v in state.items()}, path)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_init_from_reference_names_gives_the_same_network(tmp_path, prefix):
    torch.manual_seed(1)
    source = build_model("seizure-transformer").eval()
    path = tmp_path / "model.pth"
    _reference_checkpoint(source, path, prefix=prefix)
    torch.manual_seed(2)
    target = build_model("seizure-transformer")
    line = load_initial_weights(target, str(path))
    assert "reference SeizureTransformer state dict" in line and "ignored" in line
    x = torch.randn(1, 19, 15360)
    with torch.no_grad():
        assert torch.equal(source(x), target.eval()(x))
    renamed, ignored = from_reference(torch.load(path, weights_only=True))
    assert len([k for k in ignored if k.startswith("transformer_encoder_layer.")]) == 12
    assert "position_encoding.pe" in ignored and set(renamed) == set(source.state_dict())


def test_init_from_refuses_what_does_not_fit(tmp_path):
    path = tmp_path / "model.pth"
    _reference_checkpoint(build_model("seizure-transformer", in_channels=18), path)
    with pytest.raises(ReferenceWeightsError, match="shapes differ.*encoder.0.0.weight"):
        load_initial_weights(build_model("seizure-transformer", in_channels=19), str(path))
    with pytest.raises(ReferenceWeightsError, match="missing|shapes differ"):
        load_initial_weights(build_model("base"), str(path))
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ReferenceWeightsError, match="neither a trainer checkpoint"):
        load_initial_weights(build_model("tiny"), str(tmp_path / "other.pth"))


def test_cpu_smoke_fit_of_the_preset_from_reference_weights(tmp_path):
    """The preset trains on a CPU (RAdam, constant lr, fp32, 4 s windows to keep it short), starting from weights
    in the reference's names."""
    cache = tmp_path / "cache"
    cache.mkdir()
    real_cache(cache)
    torch.manual_seed(5)
    init = build_model("seizure-transformer")
    _reference_checkpoint(init, tmp_path / "model.pth")
    lines: list[str] = []
    config = TrainConfig(cache=str(cache), out=str(tmp_path / "run"), model="seizure-transformer", epochs=1,
                         batch_size=2, window_s=4.0, stride_s=2.0, max_windows_per_epoch=2, optimizer="radam",
                         schedule="constant", lr=1e-4, weight_decay=2e-5, grad_clip=0.0, precision="fp32",
                         redraw="once", val_split="dev", init_from=str(tmp_path / "model.pth"))
    result = fit(config, log=lines.append, progress=False)
    assert result.epochs_done == 1 and result.parameters == 37_848_897
    assert any("initial weights from" in line for line in lines)
    state = load_checkpoint(tmp_path / "run" / LAST)
    assert state["model_config"]["res_kernels"] == REFERENCE_RES_KERNELS
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-4 and "decoupled_weight_decay" in json.dumps(
        state["optimizer"]["param_groups"][0], default=str)
    assert state["scheduler"]["_last_lr"] == [1e-4]
    bad = TrainConfig(cache=str(cache), out=str(tmp_path / "run2"), model="tiny", epochs=1, window_s=4.0,
                      stride_s=2.0, max_windows_per_epoch=2, init_from=str(tmp_path / "model.pth"))
    with pytest.raises(FitError, match="does not fit this model"):
        fit(bad, log=lambda _line: None, progress=False)
