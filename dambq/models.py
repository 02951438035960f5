"""CIFAR-10 networks used in the paper's experiments: the CIFAR ResNets of He et al.
(2016, "Deep Residual Learning", section 4.2) and the VGG-small of LQ-Nets.

Quantization-friendly layout: every ReLU is its own nn.ReLU module, so each conv
except the stem conv (which sees the image) takes the output of a ReLU as its
input. Activation quantizers can therefore assume non-negative inputs, and a
quantizer can be swapped in for (or hooked onto) a ReLU by module name.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 'same' conv without bias: every conv here is followed by BatchNorm, whose
    shift makes a conv bias redundant (and a bias would be one more thing to quantize)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut ("option A" of He et al. 2016): subsample spatially by
    taking every `stride`-th pixel and zero-pad the new channels.

    Why: it keeps ResNet20 at the paper's ~0.27M parameters, and there is no 1x1
    projection conv on the shortcut that would need its own quantization policy.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra_channels = self.out_channels - self.in_channels
        if extra_channels > 0:
            front = extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, front, extra_channels - front))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


class ConvShortcut(nn.Sequential):
    """Projection shortcut ("option B" of He et al. 2016): 1x1 conv with the block's stride,
    then BatchNorm. The authors' DAMBQ code (V1 and V2) uses it wherever the shape changes,
    and quantizes and allocates its conv like any other, so their bit averages include it.
    Its input is the block input, the output of a ReLU, so it is quantizable unsigned."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


SHORTCUTS: dict[str, type[nn.Module]] = {"conv": ConvShortcut, "zero_pad": ZeroPadShortcut}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus the identity shortcut:
    out = relu(bn1(conv1(x))); out = bn2(conv2(out)); out = relu(out + shortcut(x)).

    relu1/relu2 are separate modules so that conv2's input, and the next block's
    conv1 input, are each the output of a named ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = SHORTCUTS[shortcut](in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: stem conv, three stages of n BasicBlocks with
    16/32/64 channels (stride 2 at the start of stages 2 and 3), global average pool
    and one linear classifier. This is the family the paper quantizes (ResNet20..110)."""

    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = "conv"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {list(SHORTCUTS)}, got {shortcut!r}")
        self.depth, self.shortcut = depth, shortcut
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = make_stage(16, 16, blocks_per_stage, stride=1, shortcut=shortcut)
        self.layer2 = make_stage(16, 32, blocks_per_stage, stride=2, shortcut=shortcut)
        self.layer3 = make_stage(32, 64, blocks_per_stage, stride=2, shortcut=shortcut)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_stage(in_channels: int, out_channels: int, num_blocks: int, stride: int,
               shortcut: str = "conv") -> nn.Sequential:
    """A stage of `num_blocks` BasicBlocks; only the first one changes width/resolution,
    as in the paper, so the feature-map size halves exactly where the width doubles."""
    blocks = [BasicBlock(in_channels, out_channels, stride, shortcut)]
    blocks += [BasicBlock(out_channels, out_channels, shortcut=shortcut) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def hidden_classifier(in_features: int, hidden: int, num_classes: int) -> nn.Sequential:
    """The authors' (V1) VGG-small head: in -> hidden -> hidden -> classes, each hidden
    Linear followed by BatchNorm1d and ReLU (no bias: BatchNorm's shift replaces it). The two
    hidden layers are quantized and allocated; only the last stays at 8 bits."""
    return nn.Sequential(nn.Linear(in_features, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class VGGSmall(nn.Module):
    """VGG-small from LQ-Nets (Zhang et al. 2018): conv 128-128-M-256-256-M-512-512-M
    (3x3 conv, BN, ReLU), then a classifier: "v1" (the authors' DAMBQ code, default)
    8192 -> 1024 -> 1024 -> classes with BatchNorm, ~14M parameters of which ~9.4M in the two
    hidden layers; "linear" one Linear(8192, classes) as in LQ-Nets (~4.6M). It is the
    standard second CIFAR-10 benchmark for low-bit quantization, wider and without shortcuts.
    Which head is used changes what a W1.0 average means, so results name the network."""

    def __init__(self, num_classes: int = 10, classifier: str = "v1"):
        super().__init__()
        if classifier not in ("v1", "linear"):
            raise ValueError(f"classifier must be 'v1' or 'linear', got {classifier!r}")
        layers: list[nn.Module] = []
        in_channels = 3
        for spec in (128, 128, "M", 256, 256, "M", 512, 512, "M"):
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [conv3x3(in_channels, int(spec)), nn.BatchNorm2d(int(spec)), nn.ReLU()]
                in_channels = int(spec)
        self.features = nn.Sequential(*layers)
        self.classifier = (hidden_classifier(512 * 4 * 4, 1024, num_classes) if classifier == "v1"
                           else nn.Linear(512 * 4 * 4, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_in, ReLU gain) for convs, BN at identity: He et al.'s init,
    which keeps activation variance stable through deep plain ReLU stacks so that the
    110-layer net trains from scratch. Linear layers keep PyTorch's default init."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _resnet(depth: int, shortcut: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10) -> CifarResNet:
        return CifarResNet(depth, num_classes, shortcut)
    build.__name__ = f"resnet{depth}" + ("" if shortcut == "conv" else "_zeropad")
    kind = "1x1 conv (the authors')" if shortcut == "conv" else "zero-padding"
    build.__doc__ = f"ResNet{depth} with {kind} shortcuts"
    return build


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet20 as in the authors' code: 1x1 conv shortcuts, quantized and allocated (~0.27M params)."""
    return CifarResNet(20, num_classes, "conv")


def vgg_small(num_classes: int = 10) -> VGGSmall:
    """VGG-small as in the authors' code (V1 classifier, ~14M params)."""
    return VGGSmall(num_classes, "v1")


def vgg_small_linear(num_classes: int = 10) -> VGGSmall:
    """VGG-small with LQ-Nets' single Linear classifier (~4.6M params): this workbook's first version."""
    return VGGSmall(num_classes, "linear")


# The plain names are the authors' networks (what the paper's numbers were measured on);
# "_zeropad" / "_linear" are the variants this workbook used before (results/quick-cpu-zeropad-amx.md).
def tv_resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision's ImageNet ResNet18 (random weights): the paper's ImageNet network. Its first
    conv and last linear stay at 8 bits (the paper's rule, `dambq.convert.paper_8bit_layers`)."""
    import torchvision
    return torchvision.models.resnet18(num_classes=num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "tv_resnet18": tv_resnet18,
    "resnet20": resnet20,
    **{f"resnet{d}": _resnet(d, "conv") for d in (32, 44, 56, 110)},
    **{f"resnet{d}_zeropad": _resnet(d, "zero_pad") for d in (20, 32, 44, 56, 110)},
    "vgg_small": vgg_small,
    "vgg_small_linear": vgg_small_linear,
}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a model by its registry name, so configs and notebooks can name models as
    strings; an unknown name fails loudly with the list of valid ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes)
