"""Whole-model state from a sharded (FSDP2) model, in the format a one-process run saves, and back.

A checkpoint is the same files whatever the strategy: ``model.safetensors`` with every weight whole
and ``training_state.pt`` with the optimizer state keyed by parameter index, as
``torch.optim.Optimizer.state_dict`` writes it. So a run can resume under another strategy or world
size: FSDP on 2 processes, then 1 process, then DDP, then FSDP again.

Under FSDP the state is gathered with ``torch.distributed.checkpoint.state_dict``'s full state
dict (all ranks take part; rank 0 receives the tensors, on the CPU) and put back with the same
API (every rank reads the whole checkpoint and keeps its shard). A sharded DCP folder would save
the gather, but the models this project trains fit in one process's memory, and one format that
``sample``, ``export`` and a 1-process resume read as they are is worth more here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

GATHER_TO_RANK_0 = StateDictOptions(full_state_dict=True, cpu_offload=True)
FROM_FULL = StateDictOptions(full_state_dict=True)


def tied_names(model: nn.Module) -> dict[str, str]:
    """Parameter names that are another name of an earlier parameter (a tied output head), to that name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole on rank 0 (empty on the others); tied weights share one tensor, as unsharded."""
    state: dict[str, Any] = dict(get_model_state_dict(model, options=GATHER_TO_RANK_0))
    for alias, name in tied_names(model).items():
        if name in state:
            state[alias] = state[name]
    return state


def load_full_model_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Each rank keeps its shard of the whole weights it read from the checkpoint.

    Rank 0 scatters the shards tensor by tensor, so every rank must walk the names in one order:
    sorted, not the file's (safetensors' order differs between processes).
    """
    set_model_state_dict(model, {name: state[name] for name in sorted(state)}, options=FROM_FULL)


def parameter_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in the order ``state_dict`` numbers them."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state on rank 0, numbered like ``optimizer.state_dict()`` (empty elsewhere)."""
    by_name: dict[str, Any] = dict(get_optimizer_state_dict(model, optimizer, options=GATHER_TO_RANK_0))
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(parameter_order(model, optimizer))}
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]} for group in by_name["param_groups"]
        ],
    }


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Put back a state numbered like ``optimizer.state_dict()``; each rank keeps its shard."""
    order = parameter_order(model, optimizer)
    try:
        by_name: dict[str, Any] = {
            "state": {order[int(i)]: state["state"][i] for i in sorted(state["state"], key=int)},
            "param_groups": [
                {**group, "params": [order[int(i)] for i in group["params"]]} for group in state["param_groups"]
            ],
        }
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"the optimizer state does not fit this model ({exc})") from None
    set_optimizer_state_dict(model, optimizer, by_name, options=FROM_FULL)
