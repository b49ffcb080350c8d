"""Loading the authors' released SeizureTransformer weights (``--init-from``) through a documented name mapping.

The reference code (keruiwu/SeizureTransformer, ``time_step_level/model.py``; the challenge package ``wu_2025/``
loads its ``model.pth`` into the same class) names its parameters differently from ``trainer.model``. With the
``seizure-transformer`` preset the two networks are the same computation, so a reference state dict maps onto
ours one tensor for one tensor:

============================================  =====================================
reference parameter                           ``trainer.model`` parameter
============================================  =====================================
``encoder.convs.{i}.weight|bias``             ``encoder.{i}.0.weight|bias``
``res_cnn_stack.members.{j}.norm1.*``         ``res.{j}.body.0.*`` (BatchNorm, with running stats)
``res_cnn_stack.members.{j}.conv1.*``         ``res.{j}.body.3.*``
``res_cnn_stack.members.{j}.norm2.*``         ``res.{j}.body.4.*``
``res_cnn_stack.members.{j}.conv2.*``         ``res.{j}.body.7.*``
``transformer_encoder.layers.{k}.*``          ``transformer.layers.{k}.*`` (same names below)
``decoder_d.convs.{i}.weight|bias``           ``decoder.{i}.0.weight|bias``
``conv_d.weight|bias``                        ``head.weight|bias``
============================================  =====================================

Ignored reference entries: ``transformer_encoder_layer.*`` (the layer object the reference keeps as an attribute
after cloning it into ``transformer_encoder``: saved in the state dict, never used by its forward pass; it is why
the file holds ~41.0 M numbers while a forward pass uses 37.8 M) and ``position_encoding.pe`` (the fixed sinusoid
table, recomputed here). A ``module.`` prefix (a model saved from ``DataParallel``) is stripped. The reference's
forward pass ends in a sigmoid; ours returns logits, so the same weights give the same probabilities after
``torch.sigmoid``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

IGNORED_PREFIXES = ("transformer_encoder_layer.", "position_encoding.")
_RES_PARTS = {"norm1": "0", "conv1": "3", "norm2": "4", "conv2": "7"}
_RES_PARTS_BACK = {v: k for k, v in _RES_PARTS.items()}

_TO_OURS = (
    (re.compile(r"^encoder\.convs\.(\d+)\.(.+)$"), lambda m: f"encoder.{m[1]}.0.{m[2]}"),
    (re.compile(r"^res_cnn_stack\.members\.(\d+)\.(norm1|conv1|norm2|conv2)\.(.+)$"),
     lambda m: f"res.{m[1]}.body.{_RES_PARTS[m[2]]}.{m[3]}"),
    (re.compile(r"^transformer_encoder\.layers\.(.+)$"), lambda m: f"transformer.layers.{m[1]}"),
    (re.compile(r"^decoder_d\.convs\.(\d+)\.(.+)$"), lambda m: f"decoder.{m[1]}.0.{m[2]}"),
    (re.compile(r"^conv_d\.(.+)$"), lambda m: f"head.{m[1]}"),
)
_TO_REFERENCE = (
    (re.compile(r"^encoder\.(\d+)\.0\.(.+)$"), lambda m: f"encoder.convs.{m[1]}.{m[2]}"),
    (re.compile(r"^res\.(\d+)\.body\.([0347])\.(.+)$"),
     lambda m: f"res_cnn_stack.members.{m[1]}.{_RES_PARTS_BACK[m[2]]}.{m[3]}"),
    (re.compile(r"^transformer\.layers\.(.+)$"), lambda m: f"transformer_encoder.layers.{m[1]}"),
    (re.compile(r"^decoder\.(\d+)\.0\.(.+)$"), lambda m: f"decoder_d.convs.{m[1]}.{m[2]}"),
    (re.compile(r"^head\.(.+)$"), lambda m: f"conv_d.{m[1]}"),
)


class ReferenceWeightsError(ValueError):
    """A state dict that cannot be loaded as the reference's weights; the message says why."""


def _rename(name: str, rules) -> str | None:
    for pattern, target in rules:
        m = pattern.match(name)
        if m:
            return target(m)
    return None


def reference_name(ours: str) -> str:
    """The reference's name of one of our parameters (the inverse of the mapping)."""
    name = _rename(ours, _TO_REFERENCE)
    if name is None:
        raise KeyError(f"{ours!r} has no counterpart in the reference model")
    return name


def to_reference(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under the reference's names (what a checkpoint saved by the reference code holds)."""
    return {reference_name(k): v for k, v in state.items()}


def is_reference_state(state: Mapping[str, object]) -> bool:
    keys = [k.removeprefix("module.") for k in state]
    return any(k.startswith("res_cnn_stack.") for k in keys) and any(k.startswith("conv_d.") for k in keys)


def from_reference(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the state dict under our names, the reference entries ignored). Refuses names it does not know."""
    out: dict[str, torch.Tensor] = {}
    ignored, unknown = [], []
    for raw, value in state.items():
        name = raw.removeprefix("module.")
        if name.startswith(IGNORED_PREFIXES):
            ignored.append(name)
            continue
        ours = _rename(name, _TO_OURS)
        if ours is None:
            unknown.append(name)
        else:
            out[ours] = value
    if unknown:
        raise ReferenceWeightsError(f"{len(unknown)} entries of the reference state dict have no counterpart here "
                                    f"(e.g. {', '.join(unknown[:3])}); is this a SeizureTransformer checkpoint?")
    return out, ignored


def load_initial_weights(model: torch.nn.Module, path: str) -> str:
    """Load ``path`` into ``model``: a trainer checkpoint (its ``model``) or a state dict saved by the reference
    code (mapped by name, see the module doc). Every parameter and buffer of ``model`` must be given, with its
    shape. Returns a line for the log."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ReferenceWeightsError(f"--init-from {path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - a file torch cannot read as tensors
        raise ReferenceWeightsError(f"--init-from {path}: not a torch state dict ({exc})") from None
    if isinstance(state, dict) and str(state.get("format", "")).startswith("trainer-checkpoint/"):
        weights, ignored, kind = state["model"], [], "trainer checkpoint"
    elif isinstance(state, dict) and is_reference_state(state):
        weights, ignored = from_reference(state)
        kind = "reference SeizureTransformer state dict"
    else:
        raise ReferenceWeightsError(f"--init-from {path}: neither a trainer checkpoint nor a SeizureTransformer state "
                                    "dict in the reference's parameter names")
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = [f"{k} {tuple(weights[k].shape)} (model {tuple(own[k].shape)})" for k in own
              if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        if shapes:
            parts.append(f"shapes differ: {'; '.join(shapes[:3])}")
        raise ReferenceWeightsError(f"--init-from {path} ({kind}) does not fit this model: {'; '.join(parts)}. "
                                    "The reference's weights need --model seizure-transformer and a pipeline with "
                                    "the same number of channels")
    model.load_state_dict(weights, strict=True)
    note = f", ignored {len(ignored)} unused reference entries" if ignored else ""
    return f"initial weights from {path} ({kind}: {len(weights)} tensors{note})"
