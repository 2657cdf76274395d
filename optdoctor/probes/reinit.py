"""``probe.reinit``: re-initialise a built model with a standard scheme, whatever its factory did.

The init remedies of the rules (OD301, OD302, OD303, OD305, OD102) used to be patches of
``model.args.init``, which only a factory taking that argument (optdoctor's built-in models)
understands; a user's own factory got "not applicable". This setting is the same remedy for any
model: the factory builds it as always, then

- every ``nn.Linear`` and convolution (``nn.Conv1d/2d/3d``, transposed ones) gets its weight
  drawn from ``scheme`` and its bias set to zero;
- every recurrent layer (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``) gets its input-to-hidden matrices
  from ``scheme``, its hidden-to-hidden matrices orthogonal (gain 1: the standard recurrent init,
  Saxe et al. 2014; Le et al. 2015) and its biases zero;
- every normalisation layer (BatchNorm, LayerNorm, GroupNorm, InstanceNorm) gets scale 1 and
  shift 0 (its ``reset_parameters``);
- anything else (embeddings, a model's own ``nn.Parameter`` s) is left as the factory made it.

Schemes: ``kaiming_normal`` (He et al. 2015: std sqrt(2 / fan_in), for ReLU-family nets),
``xavier_normal`` (Glorot & Bengio 2010: std sqrt(2 / (fan_in + fan_out)), for tanh, sigmoid and
linear nets), ``orthogonal`` (gain 1; Saxe et al. 2014, for deep linear and recurrent nets) and
``default`` (each module's own ``reset_parameters``: what PyTorch gives a layer built without any
init code).

Draws come from torch's global generator right after the factory, which ``Setup.build_model``
seeds: the same seed gives the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

SCHEMES = ("kaiming_normal", "xavier_normal", "orthogonal", "default")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_RNN = (nn.RNN, nn.GRU, nn.LSTM)


def _draw(weight: torch.Tensor, scheme: str) -> None:
    if scheme == "kaiming_normal":
        nn.init.kaiming_normal_(weight, nonlinearity="relu")
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight)
    else:
        nn.init.orthogonal_(weight)


@torch.no_grad()
def reinit(model: nn.Module, scheme: str) -> int:
    """Re-initialise ``model`` in place (see the module's docstring); returns how many modules
    were re-initialised (0: nothing this setting knows, which the caller reports)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, *_CONV)):
            if scheme == "default":
                m.reset_parameters()
            else:
                _draw(m.weight, scheme)
                if m.bias is not None:
                    m.bias.zero_()
            n += 1
        elif isinstance(m, _RNN):
            if scheme == "default":
                m.reset_parameters()
            else:
                for name, p in m.named_parameters(recurse=False):
                    if name.startswith("weight_ih"):
                        _draw(p, scheme)
                    elif name.startswith("weight_hh"):
                        for gate in p.split(m.hidden_size, dim=0):
                            nn.init.orthogonal_(gate)  # each gate's square block (GRU: 3, LSTM: 4)
                    elif name.startswith("bias"):
                        p.zero_()
            n += 1
        elif isinstance(m, _NORM) and hasattr(m, "reset_parameters"):
            m.reset_parameters()
            n += 1
    return n
