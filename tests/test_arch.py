"""Architecture representation: shapes, counts, sampler, legalize, canonicalize, ordering, zoo."""


import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ac_jax.arch import batch, shapes, topo, zoo
from ac_jax.arch.legalize import canonicalize, legalize
from ac_jax.arch.sampler import SamplerConfig, sample, sample_neighbourhood, sample_region
from ac_jax.arch.spec import (
    Arch,
    Layer,
    LayerType,
    avgpool,
    batchnorm,
    conv,
    dropout,
    linear,
    maxpool,
    relu,
    sigmoid,
)
from ac_jax.child.model import ChildNet, count_params, init_variables

FMNIST = ((28, 28, 1), 10)
CIFAR = ((32, 32, 3), 10)


def test_counts_by_hand():
    arch = Arch(
        (28, 28, 1),
        10,
        (conv(3, 8, 1, 1), batchnorm(), relu(), maxpool(2), dropout(0.5), linear(32), relu(),
         linear(10)),
    )
    info = shapes.analyze(arch)
    assert info.layers[0].out_shape == (28, 28, 8)
    assert info.layers[3].out_shape == (14, 14, 8)
    conv_params = 3 * 3 * 1 * 8 + 8
    expected = conv_params + 16 + (14 * 14 * 8 * 32 + 32) + (32 * 10 + 10)
    assert info.num_params == expected
    assert info.macs == 3 * 3 * 8 * 28 * 28 + 14 * 14 * 8 * 32 + 32 * 10
    # Channel-repeating fields are filled in.
    assert arch.layers[1].o == 8 and arch.layers[6].o == 32


def test_zoo_counts():
    assert zoo.conv7().num_params == 708_010
    assert zoo.conv10().num_params == 24_399_178
    assert zoo.conv10(num_classes=100).num_params == 24_537_508
    vgg = zoo.vgg16(num_classes=1000)
    assert sum(layer.t == LayerType.CONV for layer in vgg.layers) == 12
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.get("resnet50")


@pytest.mark.parametrize(
    "layers, message",
    [
        ((conv(3, 8), linear(5)), "last layer must be Linear with 10"),
        ((linear(20), conv(3, 8), linear(10)), "spatial layer after the first Linear"),
        ((conv(30, 8), linear(10)), "collapses"),
        ((maxpool(2, 2, 2), linear(10)), "at most kernel // 2"),
        ((Layer(3, 1, 0, 0, 0), linear(10)), "field k must be 0"),
        ((), "no layers"),
    ],
)
def test_invalid_archs_name_the_problem(layers, message):
    with pytest.raises(shapes.InvalidArchError, match=message):
        shapes.analyze(Arch((28, 28, 1), 10, layers))


def test_bad_layer_type_rejected():
    with pytest.raises(ValueError, match="layer type must be 1..8"):
        Arch((28, 28, 1), 10, ((9, 0, 0, 0, 0),))


def test_dropout_rate_encoding():
    assert dropout(0.3).p == 3 and dropout(0.3).dropout_rate == pytest.approx(0.3)
    assert dropout(0.3) == Layer(6, 0, 0, 0, 3)  # a multiple of 0.1 is the plain field
    # Any rate in [0, 1) is kept exactly; the p field (what matrices and the surrogate see)
    # is its nearest tenth, at least 0.1 for a non-zero rate so it stays a Dropout.
    for rate, field in ((0.25, 2), (0.3333, 3), (0.04, 1), (0.96, 9), (0.0, 0), (0.125, 1)):
        layer = dropout(rate)
        assert layer.dropout_rate == rate and layer.p == field
    assert dropout(0.25) != dropout(0.2) and hash(dropout(0.25)) == hash(dropout(0.25))
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            dropout(bad)


def test_an_exact_rate_survives_every_copy_and_only_matrices_quantise_it():
    import copy
    import pickle

    from ac_jax.archset.store import arch_key, layer_rows

    layer = dropout(0.25)
    assert tuple(layer) == (6, 0, 0, 0, 2) and list(layer) == [6, 0, 0, 0, 2]
    t, k, o, s, p = layer  # unpacking reads the five fields
    assert (t, p) == (6, 2)
    for same in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer),
                 layer._replace(o=7)._replace(o=0)):
        assert same == layer and same.rate == 0.25
    arch = Arch((8, 8, 1), 3, (conv(3, 4, 1, 1), relu(), layer, linear(3)))
    assert arch.layers[2].rate == 0.25 and arch.layers[2].o == 4  # channel field filled in
    assert arch != Arch((8, 8, 1), 3, (conv(3, 4, 1, 1), relu(), dropout(0.2), linear(3)))
    np.testing.assert_array_equal(arch.to_matrix()[2], [6, 0, 4, 0, 2])
    assert Arch.from_matrix(arch.to_matrix(), (8, 8, 1), 3).layers[2].dropout_rate == 0.2
    assert arch_key(arch).endswith("@0.25;8,0,3,0,0")
    assert layer_rows(arch)[2] == [6, 0, 4, 0, 2, 0.25]
    assert Arch((8, 8, 1), 3, tuple(Layer(*row) for row in layer_rows(arch))) == arch
    with pytest.raises(ValueError, match="only a Dropout"):
        Arch((8, 8, 1), 3, (conv(3, 4, 1, 1)._replace(rate=0.3), linear(3)))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), task=st.sampled_from([FMNIST, CIFAR]))
def test_sampled_archs_build_and_counts_agree(seed, task):
    """Every sampled architecture builds in Flax with output (B, classes) and equal counts."""
    input_shape, classes = task
    archs, rate = sample(4, input_shape, classes, seed=seed)
    assert 0 < rate < 1
    mats = np.stack([a.to_matrix(50) for a in archs])
    vec = batch.batch_analyze(mats, input_shape, classes)
    assert vec.valid.all()
    for arch, params, macs in zip(archs, vec.num_params, vec.macs):
        info = shapes.analyze(arch)
        assert info.num_params == params and info.macs == macs
        assert any(layer.t == LayerType.CONV for layer in arch.layers)
        variables = jax.eval_shape(lambda: init_variables(arch, jax.random.key(0)))
        assert count_params(variables["params"]) == info.num_params
        x = jax.ShapeDtypeStruct((2, *input_shape), np.float32)
        out = jax.eval_shape(lambda v, x: ChildNet(arch).apply(v, x, train=False), variables, x)
        assert out.shape == (2, classes)


def test_flax_forward_runs_for_every_layer_type():
    arch = Arch(
        (12, 12, 2),
        3,
        (batchnorm(), conv(3, 4, 2, 1), sigmoid(), avgpool(3, 1, 1), maxpool(2), dropout(0.2),
         relu(), linear(6), batchnorm(), relu(), dropout(0.1), linear(3)),
    )
    variables = init_variables(arch, jax.random.key(0))
    assert count_params(variables["params"]) == arch.num_params
    out, _ = ChildNet(arch).apply(
        variables, np.ones((5, 12, 12, 2), np.float32), train=True, mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(1)},
    )
    assert out.shape == (5, 3) and np.isfinite(out).all()


def test_sampler_is_reproducible_and_respects_caps():
    cfg = SamplerConfig(max_params=200_000, max_macs=5_000_000)
    a, rate_a = sample(50, *FMNIST, seed=7, cfg=cfg)
    b, rate_b = sample(50, *FMNIST, seed=7, cfg=cfg)
    assert a == b and rate_a == rate_b
    assert a != sample(50, *FMNIST, seed=8, cfg=cfg)[0]
    for arch in a:
        info = shapes.analyze(arch)
        assert info.num_params <= 200_000 and info.macs <= 5_000_000
        assert 2 <= len(arch) <= 50


def test_neighbourhood_sampler_stays_valid_and_near():
    seed_arch = zoo.conv7()
    archs = sample_neighbourhood(seed_arch, 30, seed=0)
    assert len(archs) == 30 and len(set(archs)) == 30
    for arch in archs:
        info = shapes.analyze(arch)
        assert info.num_params <= SamplerConfig().max_params
        assert sum(layer.t == LayerType.CONV for layer in arch.layers) >= 1


@pytest.mark.parametrize("name", ["conv7", "lenet5", "conv4"])
def test_region_sampler_covers_the_network_down_to_the_smallest_ratio(name):
    seed_arch = zoo.get(name, (28, 28, 1), 10)
    archs = sample_region(seed_arch, 40, seed=0, min_ratio=20.0)
    assert archs[0] == seed_arch  # the network itself comes first
    assert len(set(archs)) == 40
    assert sample_region(seed_arch, 20, seed=0, min_ratio=20.0) == archs[:20]  # prefix-stable
    params = np.array([a.num_params for a in archs])
    # Within the documented band, and spread over it: both ends of the region are present.
    assert (params >= seed_arch.num_params / 25).all() and (params <= 1.6 * seed_arch.num_params).all()
    assert (params <= seed_arch.num_params / 8).sum() >= 5
    assert (params >= seed_arch.num_params / 2).sum() >= 5
    for arch in archs:
        info = shapes.analyze(arch)
        assert info.macs <= 1.25 * seed_arch.macs
        assert sum(layer.t == LayerType.CONV for layer in arch.layers) >= 1
    # The ladder: uniformly thinner copies (same layer types, widths scaled).
    assert [layer.t for layer in archs[1].layers] == [layer.t for layer in seed_arch.layers]


def test_region_sampler_reproduces_the_shipped_region_archset_plan():
    """The shipped region archset was drawn (2026-12-02) by the one-edit-at-a-time sampler;
    today's chunked sampler must give the same networks at the same plan positions."""
    from pathlib import Path

    from ac_jax.archset.store import ArchsetStore

    path = Path(__file__).resolve().parent.parent / "archsets/fashion_mnist_cpu2_region.sqlite"
    with ArchsetStore(path, readonly=True) as db:
        meta, records = db.meta, db.records()
    assert meta["neighbourhood_kind"] == "region" and meta["neighbourhood_fraction"] == 1.0
    plan = sample_region(zoo.get(meta["neighbourhood_of"], meta["input_shape"],
                                 meta["num_classes"]),
                         120, meta["sample_seed"], SamplerConfig(**meta["sampler"]),
                         meta["region_min_ratio"], meta["region_max_macs"])
    shipped = {r.idx - meta["idx_offset"]: r.arch for r in records}
    checked = [i for i in range(len(plan)) if i in shipped]
    assert len(checked) >= 100
    assert all(plan[i] == shipped[i] for i in checked)


@pytest.mark.parametrize("name", ["conv7", "lenet5"])
def test_region_edits_drawn_together_equal_edits_drawn_one_by_one(name):
    """The region sampler draws its edits in chunks, with one vectorised bisection for all their
    widths; the plan must be the one-by-one plan (shipped archsets and studies were drawn so)."""
    from ac_jax.arch import sampler

    seed_arch = zoo.get(name, (28, 28, 1), 10)
    together = sampler._region_edits(np.random.default_rng(4), seed_arch, 20.0, 24)
    rng = np.random.default_rng(4)
    alone = [sampler._region_edits(rng, seed_arch, 20.0, 1)[0] for _ in range(24)]
    assert len(together) == len(alone) == 24
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
    # Each width is the bisection's: params of the scaled network bracket the target ratio.
    ratios = np.array([0.05, 0.2, 0.7, 1.3])
    widths = sampler._widths_for_ratios(seed_arch, ratios)
    for ratio, width in zip(ratios, widths):
        near = [Arch.from_matrix(sampler._scale_widths(seed_arch, width * f), seed_arch.input_shape,
                                 seed_arch.num_classes).num_params for f in (0.97, 1.03)]
        assert near[0] <= ratio * seed_arch.num_params <= near[1], (ratio, width, near)


@settings(max_examples=200, deadline=None)
@given(
    matrix=st.lists(
        st.tuples(*[st.integers(-5, 5000)] * 5), min_size=0, max_size=20
    ),
    task=st.sampled_from([FMNIST, CIFAR, ((5, 7, 2), 3)]),
)
def test_legalize_valid_and_idempotent(matrix, task):
    input_shape, classes = task
    mat = np.asarray(matrix, np.int64).reshape(-1, 5)
    mat[:, 0] = np.clip(mat[:, 0], -1, 10)  # mostly real types, some out of range
    once = legalize(mat, input_shape, classes)
    shapes.validate(once)
    assert legalize(once.to_matrix(), input_shape, classes) == once
    bounded = legalize(mat, input_shape, classes, max_len=max(len(mat), 1))
    shapes.validate(bounded)
    assert len(bounded) <= max(len(mat), 1)
    assert legalize(bounded.to_matrix(), input_shape, classes, max_len=len(bounded)) == bounded


def test_legalize_examples():
    mat = np.array([[1, 50, 20, 0, -3], [2, 2, 0, 2, 5], [8, 0, 99, 0, 0], [1, 3, 4, 1, 1],
                    [4, 7, 7, 7, 7]])
    arch = legalize(mat, (28, 28, 1), 10)
    assert arch.layers[0] == conv(10, 20, 1, 0)  # kernel, stride clamped, padding >= 0
    assert arch.layers[1] == Layer(LayerType.MAXPOOL, 2, 20, 2, 1)  # padding capped at k // 2
    assert arch.layers[2] == linear(99)
    # The Conv after the Linear is dropped; the ReLU's fields are fixed; Linear(10) appended.
    assert arch.layers[3:] == (Layer(LayerType.RELU, 0, 99, 0, 0), linear(10))
    # Collapsing layers are dropped rather than breaking the network.
    tiny = legalize(np.array([[1, 9, 8, 1, 0], [8, 0, 5, 0, 0]]), (4, 4, 1), 5)
    assert tiny.layers == (linear(5),)
    # The end marker stops reading.
    assert len(legalize(np.array([[4, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 3, 3, 1, 1]]),
                        (28, 28, 1), 10)) == 2


def test_canonicalize_removes_appendix10_noops():
    noisy = Arch(
        (32, 32, 3),
        10,
        (relu(), batchnorm(), relu(), relu(), dropout(0.0), maxpool(1, 1), relu(),
         conv(3, 15, 2, 1), relu(), relu(), batchnorm(), batchnorm(), dropout(0.0), batchnorm(),
         relu(), avgpool(1, 1), relu(), linear(10)),
    )
    clean = canonicalize(noisy)
    assert clean == noisy.replace_layers(
        (relu(), batchnorm(), relu(), conv(3, 15, 2, 1), relu(), batchnorm(), relu(), linear(10))
    )
    assert clean.num_params == noisy.num_params - 2 * 2 * 15
    assert canonicalize(clean) == clean


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_canonicalize_never_raises_params(seed):
    for arch in sample(10, *CIFAR, seed=seed)[0] + sample_neighbourhood(zoo.conv7(), 5, seed):
        clean = canonicalize(arch)
        shapes.validate(clean)
        assert clean.num_params <= arch.num_params
        assert canonicalize(clean) == clean


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), task=st.sampled_from([FMNIST, CIFAR]))
def test_batch_canonicalize_matches_canonicalize(seed, task):
    # Random matrices rich in no-op patterns (identity pools, Dropout 0, ReLU runs, BN pairs).
    rng = np.random.default_rng(seed)
    n, rows = 300, 16
    fields = [rng.integers(1, 9, (n, rows)), rng.integers(0, 3, (n, rows)),
              rng.integers(1, 20, (n, rows)), rng.integers(0, 3, (n, rows)),
              rng.integers(0, 2, (n, rows))]
    legal, lengths = batch.batch_legalize(np.stack(fields, -1), *task, max_len=rows + 2)
    mats, new_lengths = batch.batch_canonicalize(legal, lengths)
    changed = 0
    for i in range(n):
        reference = canonicalize(Arch.from_matrix(legal[i, : lengths[i]], *task))
        assert np.array_equal(mats[i], reference.to_matrix(rows + 2))  # zero after the end
        assert new_lengths[i] == len(reference)
        fast = Arch.from_legal_rows(mats[i, : new_lengths[i]], *task)
        assert fast == reference and hash(fast) == hash(reference)
        changed += len(reference) < lengths[i]
    assert changed > n // 4  # the test exercised the rules


@pytest.mark.parametrize("task", [FMNIST, CIFAR, ((5, 7, 2), 3)])
def test_traced_legalize_and_canonicalize_match_numpy(task):
    # The compressor runs both passes with jax.numpy inside its compiled search; they must give
    # the NumPy results bit for bit, on rows that need every rule: out-of-range fields, end
    # markers mid-sequence (some at row 0), collapsing and post-Linear spatial layers, no-op
    # patterns, and sequences longer than max_len.
    rng = np.random.default_rng(sum(task[0]))
    n, rows = 2000, 14
    mats = np.stack([rng.integers(0, 10, (n, rows)), rng.integers(0, 12, (n, rows)),
                     rng.integers(0, 5000, (n, rows)), rng.integers(0, 12, (n, rows)),
                     rng.integers(0, 12, (n, rows))], -1)
    small = rng.random((n, rows)) < 0.5  # many small fields, so the no-op rules fire
    mats[:, :, 1:] = np.where(small[..., None], mats[:, :, 1:] % 3, mats[:, :, 1:])
    mats[rng.random((n, rows)) < 0.05, 0] = 0
    for max_len in (rows + 1, 6):
        legal, lengths = batch.batch_legalize(mats, *task, max_len=max_len)
        canon, canon_lengths = batch.batch_canonicalize(legal, lengths)

        @jax.jit
        def traced(m):
            out = batch.batch_legalize(m, *task, max_len=max_len, xp=jax.numpy)
            return out, batch.batch_canonicalize(*out, xp=jax.numpy)

        (t_legal, t_lengths), (t_canon, t_canon_lengths) = traced(mats.astype(np.uint16))
        for mine, reference in ((t_legal, legal), (t_lengths, lengths), (t_canon, canon),
                                (t_canon_lengths, canon_lengths)):
            np.testing.assert_array_equal(np.asarray(mine), reference)
        assert (canon_lengths < lengths).mean() > 0.2  # canonicalize had work to do
    assert (lengths == max_len).mean() > 0.1  # and some sequences were cut at max_len


def test_topological_order_and_back():
    layers = [conv(3, 8, 1, 1), relu(), linear(10)]
    names = ["fc", "conv", "act"]
    nodes = {"conv": layers[0], "act": layers[1], "fc": layers[2]}
    edges = [("act", "fc"), ("conv", "act")]
    order = topo.topological_order(names, edges)
    assert order == ["conv", "act", "fc"]
    arch = topo.dag_to_arch(nodes, edges, (28, 28, 1), 10)
    assert arch.layers == tuple(Arch((28, 28, 1), 10, tuple(layers)).layers)
    back_nodes, back_edges = topo.arch_to_dag(arch)
    assert topo.dag_to_arch(back_nodes, back_edges, (28, 28, 1), 10) == arch


def test_topological_order_rejects_ambiguous_and_cyclic_graphs():
    with pytest.raises(ValueError, match="not unique"):
        topo.topological_order(["a", "b", "c"], [("a", "b"), ("a", "c")])
    with pytest.raises(ValueError, match="cycle"):
        topo.topological_order(["a", "b"], [("a", "b"), ("b", "a")])
    # A skip connection keeps the order unique (Lemma 7.2) but is not a sequential net.
    order = topo.topological_order(["a", "b", "c"], [("a", "b"), ("b", "c"), ("a", "c")])
    assert order == ["a", "b", "c"]
    with pytest.raises(ValueError, match="skip"):
        topo.dag_to_arch(
            {"a": conv(3, 4, 1, 1), "b": relu(), "c": linear(10)},
            [("a", "b"), ("b", "c"), ("a", "c")],
            (28, 28, 1),
            10,
        )
