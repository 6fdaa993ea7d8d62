"""Conditioning dropout and classifier-free guidance for a UNet that sees concat(x_t, y) and a class label.

The *null* condition replaces the concatenated stage-one image y by zeros and the class by the UNet's
null class. For Formulation 2 the forward process stays shifted by y (the chain is defined around y);
only what the network is shown is dropped. Guidance with weight w (Ho & Salimans 2022) combines
    out = out(cond) + w * (out(cond) - out(null)),
which is linear in the output, so it holds for eps and v prediction alike; w = 0 is plain conditional
sampling.
"""

from __future__ import annotations

import torch

from main.models.diffusion.unet import UNet


def class_labels_for(unet: UNet, labels: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
    """Data-set labels [N] (-1 = none) -> the UNet's class ids (its null class for -1); None if the UNet has no classes."""
    if unet.num_classes is None:
        return None
    null = torch.full((n,), unet.num_classes, device=device, dtype=torch.long)
    return null if labels is None else torch.where(labels < 0, null, labels.to(device))


class ConditionedDenoiser:
    """The ``model(network_input, t)`` that GaussianDiffusion and the samplers call.

    Args:
        unet: the network; its input is concat(x_t, y) when in_channels = 2 * out_channels.
        class_labels: UNet class ids [N] (see `class_labels_for`) or None.
        keep: bool [N]; where False the conditions are dropped (training with conditioning dropout).
        guidance: classifier-free guidance weight w (sampling); 0 runs the network once.
    """

    def __init__(self, unet: UNet, class_labels: torch.Tensor | None = None, keep: torch.Tensor | None = None, guidance: float = 0.0):
        self.unet, self.class_labels, self.keep, self.guidance = unet, class_labels, keep, float(guidance)
        self.image_channels = unet.out_channels
        self.sees_image = unet.in_channels == 2 * unet.out_channels

    def null(self, network_input: torch.Tensor, keep: torch.Tensor | None = None):
        """(input, labels) with the conditions dropped where keep is False (everywhere if keep is None)."""
        n = network_input.shape[0]
        keep = torch.zeros(n, dtype=torch.bool, device=network_input.device) if keep is None else keep
        if self.sees_image:
            mask = keep.to(network_input.dtype).reshape(n, 1, 1, 1)
            x_t, y = network_input.split(self.image_channels, dim=1)
            network_input = torch.cat([x_t, y * mask], dim=1)
        labels = self.class_labels
        if labels is not None:
            labels = torch.where(keep, labels, torch.full_like(labels, self.unet.num_classes))
        return network_input, labels

    def __call__(self, network_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.guidance:
            null_input, null_labels = self.null(network_input)
            labels = None if self.class_labels is None else torch.cat([self.class_labels, null_labels])
            cond, uncond = self.unet(torch.cat([network_input, null_input]), torch.cat([t, t]), labels).chunk(2)
            return cond + self.guidance * (cond - uncond)
        if self.keep is not None:
            network_input, labels = self.null(network_input, self.keep)
            return self.unet(network_input, t, labels)
        return self.unet(network_input, t, self.class_labels)
