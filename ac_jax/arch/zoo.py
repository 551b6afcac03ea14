"""Named input networks: CONV-7, CONV-10 (paper Section 5.3) and VGG-16 as printed in Appendix 10.

The paper gives only "stacked conv-bn-relu blocks and a fully connected layer" and the parameter
counts (708K, 24.4M). Our layouts use 3x3 convolutions with padding 1, BatchNorm, ReLU, 2x2
max-pooling and one Linear; the widths were picked by a search over common widths for the count
closest to the paper's:

* CONV-7 (28x28x1, 10 classes): widths 64, 64, 64, 96, 128, 128, 256, pools after blocks 2, 4, 7
  -> 708,010 parameters.
* CONV-10 (32x32x3, 10 classes): widths 64, 64, 256, 256, 256, 512, 512, 768, 768, 1536, pools
  after blocks 2, 4, 6, 8, 10 -> 24,399,178 parameters (with 100 classes: 24,537,508).
* LeNet-5 (28x28x1): the classic layout with ReLU and 2x2 max-pooling, 5x5 convolutions of 6
  (padding 2) and 16 channels, a 120-84 classifier -> 61,706 parameters (not from the paper: a
  second small Fashion-MNIST network for the study's amortised case).
* CONV-4 (28x28x1): conv-bn-relu blocks of widths 32, 32, 64, 64, pools after blocks 2 and 4, one
  Linear -> 96,746 parameters (likewise not from the paper).
* VGG-16 exactly as the Appendix 10 printout: 12 convolutions (the printout omits one of the
  usual 13), BatchNorm, and a 512-4096-4096 classifier with Dropout 0.5; the 512 input features
  mean a 32x32 input. The printout's head has 1000 classes; `num_classes` replaces it.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ac_jax.arch.spec import Arch, Layer, batchnorm, conv, dropout, linear, maxpool, relu

CONV7_WIDTHS = (64, 64, 64, 96, 128, 128, 256)
CONV7_POOL_AFTER = (2, 4, 7)
CONV10_WIDTHS = (64, 64, 256, 256, 256, 512, 512, 768, 768, 1536)
CONV10_POOL_AFTER = (2, 4, 6, 8, 10)
# "M" is a 2x2 max-pool, as in torchvision's VGG configs.
VGG16_APPENDIX10 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, "M")


def conv_bn_relu_stack(
    widths: Sequence[int], pool_after: Sequence[int]
) -> list[Layer]:
    """Conv3x3(pad 1)-BN-ReLU blocks, with a 2x2 max-pool after the (1-based) blocks listed."""
    layers: list[Layer] = []
    for block, width in enumerate(widths, start=1):
        layers += [conv(3, width, 1, 1), batchnorm(), relu()]
        if block in pool_after:
            layers.append(maxpool(2))
    return layers


def conv7(input_shape=(28, 28, 1), num_classes: int = 10) -> Arch:
    layers = conv_bn_relu_stack(CONV7_WIDTHS, CONV7_POOL_AFTER) + [linear(num_classes)]
    return Arch(tuple(input_shape), num_classes, tuple(layers))


def conv10(input_shape=(32, 32, 3), num_classes: int = 10) -> Arch:
    layers = conv_bn_relu_stack(CONV10_WIDTHS, CONV10_POOL_AFTER) + [linear(num_classes)]
    return Arch(tuple(input_shape), num_classes, tuple(layers))


def vgg16(input_shape=(32, 32, 3), num_classes: int = 10) -> Arch:
    layers: list[Layer] = []
    for item in VGG16_APPENDIX10:
        if item == "M":
            layers.append(maxpool(2))
        else:
            layers += [conv(3, int(item), 1, 1), batchnorm(), relu()]
    layers += [linear(4096), relu(), dropout(0.5), linear(4096), relu(), dropout(0.5)]
    layers.append(linear(num_classes))
    return Arch(tuple(input_shape), num_classes, tuple(layers))


def lenet5(input_shape=(28, 28, 1), num_classes: int = 10) -> Arch:
    layers = [conv(5, 6, 1, 2), relu(), maxpool(2), conv(5, 16), relu(), maxpool(2),
              linear(120), relu(), linear(84), relu(), linear(num_classes)]
    return Arch(tuple(input_shape), num_classes, tuple(layers))


def conv4(input_shape=(28, 28, 1), num_classes: int = 10) -> Arch:
    layers = conv_bn_relu_stack((32, 32, 64, 64), (2, 4)) + [linear(num_classes)]
    return Arch(tuple(input_shape), num_classes, tuple(layers))


def tinycnn(input_shape=(12, 12, 1), num_classes: int = 4) -> Arch:
    """A two-block CNN for tests and the tiny config (not from the paper)."""
    layers = conv_bn_relu_stack((8, 16), (1, 2)) + [linear(num_classes)]
    return Arch(tuple(input_shape), num_classes, tuple(layers))


ZOO: dict[str, Callable[..., Arch]] = {
    "conv7": conv7,
    "conv10": conv10,
    "vgg16": vgg16,
    "lenet5": lenet5,
    "conv4": conv4,
    "tinycnn": tinycnn,
}


def get(name: str, input_shape=None, num_classes: int | None = None) -> Arch:
    """A zoo network by name, for a task's input shape and class count (defaults: its own)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    kwargs = {}
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return ZOO[key](**kwargs)
