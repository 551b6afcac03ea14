"""PyTorch module exported by ac_jax.arch.torch_io: 106,887 parameters."""

import torch
from torch import nn

INPUT_SHAPE = (1, 28, 28)  # (C, H, W)
NUM_CLASSES = 10


class CompressedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 98, kernel_size=3, stride=1, padding=1),
            nn.Sigmoid(),
            nn.BatchNorm2d(98),
            nn.MaxPool2d(kernel_size=2, stride=2, padding=1),
            nn.BatchNorm2d(98),
            nn.ReLU(),
            nn.BatchNorm2d(98),
            nn.MaxPool2d(kernel_size=2, stride=2, padding=0),
            nn.BatchNorm2d(98),
            nn.ReLU(),
            nn.Conv2d(98, 45, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(45),
            nn.Conv2d(45, 56, kernel_size=1, stride=1, padding=0),
            nn.Conv2d(56, 72, kernel_size=2, stride=1, padding=1),
            nn.BatchNorm2d(72),
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(72),
            nn.ReLU(),
            nn.BatchNorm2d(72),
        )
        self.classifier = nn.Sequential(
            nn.Linear(4608, 10),
        )

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


if __name__ == "__main__":
    model = CompressedModel().eval()
    with torch.no_grad():
        out = model(torch.randn(2, *INPUT_SHAPE))
    print("output shape:", tuple(out.shape))
    print("parameters:", sum(p.numel() for p in model.parameters()))
