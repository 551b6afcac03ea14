"""PyTorch module exported by ac_jax.arch.torch_io: 41,899 parameters."""

import torch
from torch import nn

INPUT_SHAPE = (1, 28, 28)  # (C, H, W)
NUM_CLASSES = 10


class CompressedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 18, kernel_size=3, stride=1, padding=0),
            nn.BatchNorm2d(18),
            nn.Sigmoid(),
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(18),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(18, 33, kernel_size=2, stride=1, padding=0),
            nn.ReLU(),
            nn.Conv2d(33, 33, kernel_size=3, stride=1, padding=2),
            nn.BatchNorm2d(33),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=0),
            nn.Conv2d(33, 32, kernel_size=3, stride=1, padding=2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 36, kernel_size=2, stride=1, padding=0),
            nn.BatchNorm2d(36),
            nn.Conv2d(36, 36, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(36),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2, padding=0),
        )
        self.classifier = nn.Sequential(
            nn.Linear(324, 10),
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
