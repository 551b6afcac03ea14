"""cifar10: CONV-10, the paper's schedule (see configs/_cifar_like.py)."""

from configs._cifar_like import VARIANTS, cifar_like_config  # noqa: F401 (VARIANTS: configs.variants)


def get_config(variant: str = "default"):
    return cifar_like_config("cifar10", variant)
