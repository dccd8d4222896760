"""SimCLR's networks: a torchvision ResNet encoder f (optionally narrower, with a CIFAR-style stem
for small images) whose pooled features are h, and a projection head g (none / linear /
nonlinear Linear-BN-ReLU-Linear) giving z = g(h)."""
import torch
import torchvision.models.resnet as tvr
from torch import nn

ARCHS = {
    "resnet18": (tvr.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tvr.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tvr.Bottleneck, [3, 4, 6, 3]),
}
HEADS = ("none", "linear", "nonlinear")
# Images of at most this side get the CIFAR stem (3x3 stride-1 conv, no max-pool): ImageNet's
# 7x7/2 conv + max-pool would shrink a 32 px image to 8 px before the first residual stage.
CIFAR_STEM_MAX_SIZE = 64


class ResNetEncoder(tvr.ResNet):
    """torchvision's ResNet (same blocks, same init, same forward) with the classifier removed,
    an optional CIFAR stem and a width knob (channels of the first stage; torchvision's is 64)."""

    def __init__(self, arch: str = "resnet18", width: int = 64, cifar_stem: bool = False):
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHS)}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        block, layers = ARCHS[arch]
        nn.Module.__init__(self)
        # the attributes torchvision's _make_layer reads
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()  # h = the pooled features
        self.feature_dim = 8 * width * block.expansion
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def projection_head(kind: str, in_dim: int, out_dim: int = 128, hidden_dim: int = None) -> nn.Module:
    """The paper's head ablation: 'none' (z = h), 'linear', 'nonlinear' (Linear-BN-ReLU-Linear)."""
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "nonlinear":
        hidden_dim = hidden_dim or in_dim
        return nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),  # BN follows: a bias would be redundant
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
    raise ValueError(f"unknown projection head {kind!r}; expected one of {HEADS}")


class SimCLRModel(nn.Module):
    """encoder f and head g: forward(x) -> (h, z)."""

    def __init__(self, arch="resnet18", image_size=32, head="nonlinear", width=64, proj_dim=128,
                 cifar_stem=None):
        super().__init__()
        if cifar_stem is None:
            cifar_stem = image_size <= CIFAR_STEM_MAX_SIZE
        self.encoder = ResNetEncoder(arch, width=width, cifar_stem=cifar_stem)
        self.head = projection_head(head, self.encoder.feature_dim, proj_dim)

    def forward(self, x: torch.Tensor):
        h = self.encoder(x)
        return h, self.head(h)


def build_model(cfg: dict) -> SimCLRModel:
    """Model from a run config (keys: arch, image_size, head, width, proj_dim)."""
    return SimCLRModel(
        arch=cfg["arch"], image_size=cfg["image_size"], head=cfg["head"], width=cfg["width"],
        proj_dim=cfg.get("proj_dim", 128),
    )


# PyTorch's oneDNN CPU convolution crashes (abort, segfault, bus error or a hang) in the weight
# gradient of a 1x1 convolution with stride > 1 and fewer than 8 input channels in channels_last,
# when oneDNN runs its AVX2 kernels (any CPU without AVX-512, or ONEDNN_MAX_CPU_ISA=AVX2). A
# ResNet's downsample shortcut at width < 8 is exactly that layer. docs/known-issues.md has the
# reproduction and the measured boundary.
ONEDNN_SAFE_MIN_CHANNELS = 8


def onednn_channels_last_hazards(model: nn.Module) -> list:
    """Names of the convolutions of `model` that hit the oneDNN channels_last crash on CPU."""
    return [
        name for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)
        and tuple(m.stride) != (1, 1) and m.in_channels < ONEDNN_SAFE_MIN_CHANNELS
    ]


def preferred_memory_format(model: nn.Module, device) -> torch.memory_format:
    """channels_last where it is fast and safe, else contiguous.

    channels_last is faster on CUDA (tensor cores) and on CPU through oneDNN (about 20% per
    training step of the default ResNet-18 at width 16, 24 px, 1 thread). On CPU it is avoided
    for models with a layer that crashes oneDNN's AVX2 kernels (see
    `onednn_channels_last_hazards`). The decision depends on the model only, never on the CPU
    it runs on, so a run behaves the same on every machine.
    """
    if torch.device(device).type == "cpu" and onednn_channels_last_hazards(model):
        return torch.contiguous_format
    return torch.channels_last
