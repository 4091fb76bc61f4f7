"""AP-Loss and AUC-loss against an independent NumPy implementation of Algorithm 1 (no TF in the reference)."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.losses import ap_loss, auc_loss


def step(x, delta):
    """Eq. 21, written out case by case."""
    out = np.empty_like(x)
    for n, v in np.ndenumerate(x):
        out[n] = 0.0 if v < -delta else (1.0 if v > delta else v / (2 * delta) + 0.5)
    return out


def reference(scores, labels, delta=1.0, interpolate=True, kind="ap"):
    """Algorithm 1 line by line, over *all* negatives (no non-trivial-negative trick), in float64."""
    s = np.asarray(scores, np.float64).ravel()
    t = np.asarray(labels).ravel()
    pos = [i for i in range(s.size) if t[i] == 1]
    neg = [j for j in range(s.size) if t[j] == 0]
    g = np.zeros_like(s)
    if not pos:
        return 0.0, g
    max_prec, total = 0.0, 0.0
    for i in sorted(pos, key=lambda k: (s[k], k)):
        f_neg = step(s[neg] - s[i], delta)
        if kind == "auc":
            primary = f_neg / max(len(neg), 1)
        else:
            others = [k for k in pos if k != i]
            denominator = 1.0 + step(s[others] - s[i], delta).sum() + f_neg.sum()  # Eq. 3
            primary = f_neg / denominator
            prec = 1.0 - primary.sum()
            if not interpolate or prec >= max_prec:
                max_prec = prec
            else:
                primary = primary * (1.0 - max_prec) / (1.0 - prec)
        total += primary.sum()
        g[i] -= primary.sum()
        for jj, j in enumerate(neg):
            g[j] += primary[jj]
        if not interpolate:
            max_prec = 0.0
    return total / len(pos), g / len(pos)


def tf_value_and_grad(fn, scores, labels, upstream=1.0, **kwargs):
    s = tf.Variable(np.asarray(scores, np.float32))
    with tf.GradientTape() as tape:
        loss = fn(s, tf.constant(labels), **kwargs) * upstream
    return float(loss), tape.gradient(loss, s).numpy()


def random_case(rng, n, pos_frac=0.05, ignore_frac=0.1, quantize=None):
    scores = rng.normal(0, 1.5, n)
    if quantize:
        scores = np.round(scores * quantize) / quantize  # many exact ties
    labels = np.where(rng.random(n) < pos_frac, 1, 0)
    labels[rng.random(n) < ignore_frac] = -1
    return scores.astype(np.float32), labels.astype(np.int32)


CASES = {
    "hand": (np.array([2.0, 1.0, 0.5, -1.0, 3.0]), np.array([1, 0, 1, 0, -1])),
    "all_equal": (np.zeros(40), np.array([1] * 5 + [0] * 30 + [-1] * 5)),
    "one_positive": (np.linspace(-3, 3, 50), np.array([0] * 20 + [1] + [0] * 29)),
    "perfect_ranking": (np.array([5.0, 4.0, -3.0, -4.0]), np.array([1, 1, 0, 0])),
    "inverted_ranking": (np.array([-5.0, -4.0, 3.0, 4.0]), np.array([1, 1, 0, 0])),
    "no_negatives": (np.array([0.3, -0.2, 1.0]), np.array([1, 1, -1])),
}


METHODS = ["sorted", "pairwise"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("kind", ["ap", "auc"])
def test_named_cases_match_reference(name, kind, method):
    scores, labels = CASES[name]
    fn = ap_loss if kind == "ap" else auc_loss
    value, grad = tf_value_and_grad(fn, scores, labels, method=method)
    ref_value, ref_grad = reference(scores, labels, kind=kind)
    np.testing.assert_allclose(value, ref_value, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_values(method):
    # Positives 0.5 and 2.0, negative 1.0 (-1.0 is trivial, 3.0 ignored); delta 1.
    # i = 0.5: f(0.5) = 0.75, rank+ = 1 + f(1.5) = 2, L = 0.75 / 2.75, precision 8/11.
    # i = 2.0: f(-1) = 0, precision 1. Loss = (3/11 + 0) / 2.
    value, grad = tf_value_and_grad(ap_loss, *CASES["hand"], method=method)
    assert value == pytest.approx(3 / 22, abs=1e-6)
    np.testing.assert_allclose(grad, [0, 3 / 22, -3 / 22, 0, 0], atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("interpolate", [True, False])
def test_random_cases_match_reference(seed, interpolate, method):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    scores, labels = random_case(rng, n, pos_frac=rng.uniform(0.01, 0.5), quantize=4 if seed % 3 == 0 else None)
    delta = float(rng.choice([0.25, 1.0, 2.0]))
    value, grad = tf_value_and_grad(ap_loss, scores, labels, delta=delta, interpolate=interpolate, method=method)
    ref_value, ref_grad = reference(scores, labels, delta=delta, interpolate=interpolate)
    np.testing.assert_allclose(value, ref_value, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-5)
    a_value, a_grad = tf_value_and_grad(auc_loss, scores, labels, delta=delta, method=method)
    r_value, r_grad = reference(scores, labels, delta=delta, kind="auc")
    np.testing.assert_allclose(a_value, r_value, atol=1e-5)
    np.testing.assert_allclose(a_grad, r_grad, atol=1e-5)


def test_thousands_of_negatives_several_images_and_small_chunks():
    """A [4 images, 600 anchors, 3 classes] batch ranked as one list; chunking must not change anything."""
    rng = np.random.default_rng(7)
    scores, labels = random_case(rng, 4 * 600 * 3, pos_frac=0.01)
    scores, labels = scores.reshape(4, 600, 3), labels.reshape(4, 600, 3)
    ref_value, ref_grad = reference(scores, labels)
    runs = [dict(method="sorted")] + [dict(method="pairwise", max_pair_elements=m) for m in (1 << 24, 5000, 1)]
    for kwargs in runs:  # sorted; pairwise with everything at once, a few positives per chunk, one at a time
        value, grad = tf_value_and_grad(ap_loss, scores, labels, **kwargs)
        assert grad.shape == (4, 600, 3)
        np.testing.assert_allclose(value, ref_value, atol=1e-5)
        np.testing.assert_allclose(grad.ravel(), ref_grad, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_no_positives_gives_zero_loss_and_zero_gradient(method):
    scores = np.random.default_rng(0).normal(size=100).astype(np.float32)
    for labels in (np.zeros(100, np.int32), -np.ones(100, np.int32)):
        for fn in (ap_loss, auc_loss):
            value, grad = tf_value_and_grad(fn, scores, labels, method=method)
            assert value == 0.0 and not grad.any()


def test_ignored_entries_get_zero_gradient_and_do_not_change_the_rest():
    rng = np.random.default_rng(3)
    scores, labels = random_case(rng, 300, pos_frac=0.1, ignore_frac=0.3)
    _, grad = tf_value_and_grad(ap_loss, scores, labels)
    assert not grad[labels == -1].any()
    kept = labels >= 0
    value_kept, grad_kept = tf_value_and_grad(ap_loss, scores[kept], labels[kept])
    value, _ = tf_value_and_grad(ap_loss, scores, labels)
    assert value == pytest.approx(value_kept, abs=1e-6)
    np.testing.assert_allclose(grad[kept], grad_kept, atol=1e-6)


def test_gradient_is_scaled_by_the_upstream_gradient():
    rng = np.random.default_rng(11)
    scores, labels = random_case(rng, 200, pos_frac=0.1)
    _, grad = tf_value_and_grad(ap_loss, scores, labels)
    _, grad3 = tf_value_and_grad(ap_loss, scores, labels, upstream=-3.0)
    np.testing.assert_allclose(grad3, -3.0 * grad, atol=1e-6)
    assert np.abs(grad).sum() > 0


def test_runs_inside_tf_function_with_unknown_shapes():
    fn = tf.function(lambda s, t: ap_loss(s, t), input_signature=[tf.TensorSpec([None, None], tf.float32),
                                                                    tf.TensorSpec([None, None], tf.int32)])
    scores, labels = random_case(np.random.default_rng(5), 120, pos_frac=0.2)
    value = fn(tf.constant(scores.reshape(12, 10)), tf.constant(labels.reshape(12, 10)))
    assert float(value) == pytest.approx(reference(scores, labels)[0], abs=1e-5)


def test_proposition_1_linear_scorer_on_separable_data_reaches_ap_1():
    """Proposition 1 in practice: error-driven updates of a linear scorer on separable data reach AP = 1.

    Starts from the *inverted* scorer (AP-loss near 1) on 2-D-plus-noise data separable by a hyperplane
    with a margin, few positives as in detection; plain ``w -= grad`` steps with AP-loss's gradient.
    """
    rng = np.random.default_rng(0)
    w_true = np.array([1.5, -2.0, 0.5], np.float32)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    margin = x @ w_true - 1.8
    keep = np.abs(margin) > 0.1
    x, labels = x[keep], (margin[keep] > 0).astype(np.int32)
    assert 50 < labels.sum() < 0.25 * labels.size
    w = tf.Variable(-w_true[:, None])
    b = tf.Variable(0.0)

    def true_ap():
        scores = (x @ w.numpy()).ravel() + float(b.numpy())
        order = np.argsort(-scores, kind="stable")
        hits = labels[order] == 1
        return float(np.mean((np.cumsum(hits) / np.arange(1, hits.size + 1))[hits]))

    losses = []
    for _ in range(200):
        with tf.GradientTape() as tape:
            loss = ap_loss(tf.squeeze(x @ w, 1) + b, labels, interpolate=False)
        losses.append(float(loss))
        for var, grad in zip([w, b], tape.gradient(loss, [w, b])):
            var.assign_sub(grad)
        if true_ap() == 1.0:
            break
    assert losses[0] > 0.8
    assert true_ap() == 1.0, f"AP {true_ap():.4f} after {len(losses)} updates"


def test_large_batch_sorted_matches_pairwise_and_stays_accurate():
    """2e5 pairs with scores spread like a detector's logits: the float64 prefix sums keep float32 accuracy."""
    rng = np.random.default_rng(42)
    n = 200_000
    scores = np.concatenate([rng.normal(-4.0, 1.5, n - 300), rng.normal(0.5, 1.0, 300)]).astype(np.float32)
    labels = np.zeros(n, np.int32)
    labels[n - 300:] = 1
    labels[rng.choice(n - 300, 2000, replace=False)] = -1
    v_sorted, g_sorted = tf_value_and_grad(ap_loss, scores, labels, method="sorted")
    v_pair, g_pair = tf_value_and_grad(ap_loss, scores, labels, method="pairwise")
    assert v_sorted == pytest.approx(v_pair, abs=1e-5)
    np.testing.assert_allclose(g_sorted, g_pair, atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        ap_loss(tf.constant(scores[:4]), labels[:4], method="quadratic")
