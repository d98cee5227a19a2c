"""What a run needs beyond its weights to continue where it stopped: optimizer moments and the torch RNG.

Saved as flat safetensors (`model.*`, `optim.<param>.<key>`, `torch_rng`) plus a small JSON part (the
optimizer's param groups and which keys each parameter's state holds), so nothing is pickled. Shared by
`mt-policy train` and `mt-policy add-task`, which add their own fields (step, numpy RNG, options) beside it.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["restore_training_state", "training_state"]


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON-able fields) holding the raw model weights, the optimizer state and the torch RNG."""
    optim = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, state in optim["state"].items():
        tensors |= {f"optim.{idx}.{k}": torch.as_tensor(v) for k, v in state.items()}
    tensors["torch_rng"] = torch.get_rng_state()
    return tensors, {"param_groups": optim["param_groups"],
                     "optim_keys": {str(i): list(s) for i, s in optim["state"].items()}}


def restore_training_state(tensors: dict[str, torch.Tensor], fields: dict[str, Any], model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer) -> None:
    """Load what `training_state` wrote back into `model` and `optimizer`, and reset the torch RNG."""
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optim_state = {int(i): {k: tensors[f"optim.{i}.{k}"] for k in keys} for i, keys in fields["optim_keys"].items()}
    optimizer.load_state_dict({"state": optim_state, "param_groups": fields["param_groups"]})
    # Saved contiguous; give each moment its parameter's layout again (channels-last conv weights), or a fused
    # update takes another code path and a resumed run drifts from a straight one in the last bits.
    for param, moments in optimizer.state.items():
        for key, value in moments.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                moments[key] = torch.empty_like(param).copy_(value)
    torch.set_rng_state(tensors["torch_rng"])
