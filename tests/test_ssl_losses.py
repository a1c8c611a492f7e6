"""DINOv2 losses and teacher targets against hand-computed values and the release's (torch) numbers.

REF values were computed once with the DINOv2 release's own loss modules
(dinov2/loss/{dino_clstoken_loss,ibot_patch_loss,koleo_loss}.py, torch 2.14.1)
on exactly these inputs; the numpy formulas below are independent re-derivations.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vision.ssl import losses
from vision.train import mesh as mesh_lib

T4 = np.array([[0.1, -0.2, 0.3], [0.0, 0.2, -0.1], [0.25, 0.05, -0.3], [-0.15, 0.1, 0.2]], np.float32)
REF_SK = [[0.22750253975391388, 0.01016662735491991, 0.7623308300971985],
          [0.12821969389915466, 0.8503894209861755, 0.021390873938798904],
          [0.8902119994163513, 0.1081380620598793, 0.0016498408513143659],
          [0.03710254281759262, 0.40570834279060364, 0.5571891069412231]]
REF_IBOT_SK = [[0.07707338035106659, 0.001961984671652317, 0.9209645986557007],  # rows 0-2 of T5, temp 0.07
               [0.02996942214667797, 0.9651015996932983, 0.004928952548652887],
               [0.9037611484527588, 0.09599877893924713, 0.00024001410929486156]]


def sinkhorn_numpy(t, temp, iters=3):
  """The release's algorithm in float64 numpy: Q is K x B."""
  q = np.exp(np.asarray(t, np.float64) / temp).T
  k, b = q.shape
  q /= q.sum()
  for _ in range(iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def test_sinkhorn_knopp_matches_release_and_rows_sum_to_one():
  q = np.asarray(losses.sinkhorn_knopp(jnp.asarray(T4), 0.1))
  np.testing.assert_allclose(q, REF_SK, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(q, sinkhorn_numpy(T4, 0.1), rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(q.sum(axis=1), np.ones(4), rtol=1e-6)
  # Three iterations nearly balance the prototypes: each gets ~B/K = 4/3 of the mass (1.28, 1.37, 1.34 here,
  # against 1.13, 1.23, 1.64 for the plain softmax of the same logits).
  np.testing.assert_allclose(q.sum(axis=0), [4 / 3] * 3, atol=0.06)
  softmax = np.exp(T4 / 0.1) / np.exp(T4 / 0.1).sum(1, keepdims=True)
  assert np.abs(softmax.sum(0) - 4 / 3).max() > 5 * np.abs(q.sum(0) - 4 / 3).max()
  # Large logits at a small temperature would overflow exp without the max subtraction.
  big = np.asarray(losses.sinkhorn_knopp(jnp.asarray(T4) * 100.0, 0.04))
  assert np.all(np.isfinite(big)) and np.allclose(big.sum(axis=1), 1.0, atol=1e-5)


def test_sinkhorn_knopp_ignores_padding_rows_like_the_release_on_masked_patches():
  t5 = np.concatenate([T4, [[0.3, 0.3, -0.2]]]).astype(np.float32)
  t5[3] = [9.0, -9.0, 9.0]  # padding: must not change the valid rows
  valid = np.array([True, True, True, False, False])
  q = np.asarray(losses.sinkhorn_knopp(jnp.asarray(t5), 0.07, valid=jnp.asarray(valid)))
  np.testing.assert_allclose(q[:3], REF_IBOT_SK, rtol=5e-5, atol=1e-7)
  np.testing.assert_array_equal(q[3:], 0.0)


def test_sinkhorn_knopp_over_8_devices_equals_one_device():
  assert len(jax.devices()) == 8
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(32, 10)).astype(np.float32)
  valid = rng.random(32) > 0.3
  one = np.asarray(losses.sinkhorn_knopp(jnp.asarray(logits), 0.05, valid=jnp.asarray(valid)))
  mesh = mesh_lib.make_mesh()
  rows = NamedSharding(mesh, P("data"))
  x, v = jax.device_put(logits, rows), jax.device_put(valid, rows)
  # Explicit collectives (shard_map, psum over 'data'): each device sees 4 rows.
  explicit = jax.jit(lambda x, v: losses.sinkhorn_knopp_sharded(x, 0.05, mesh, valid=v))(x, v)
  # The plain function on sharded global arrays: XLA inserts the all-reduces.
  implicit = jax.jit(lambda x, v: losses.sinkhorn_knopp(x, 0.05, valid=v), out_shardings=rows)(x, v)
  assert explicit.sharding.shard_shape(explicit.shape) == (4, 10)
  np.testing.assert_allclose(np.asarray(explicit), one, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(implicit), one, rtol=1e-5, atol=1e-7)
  # Normalising per device instead (what a missing all-reduce would do) is far off.
  per_device = np.concatenate([np.asarray(losses.sinkhorn_knopp(jnp.asarray(logits[i:i + 4]), 0.05,
                                                                 valid=jnp.asarray(valid[i:i + 4])))
                               for i in range(0, 32, 4)])
  assert np.abs(per_device - one).max() > 1e-2


def test_softmax_centering_and_center_momentum():
  center = np.array([[0.05, -0.05, 0.0]], np.float32)
  probs = losses.softmax_center(jnp.asarray(T4), jnp.asarray(center), 0.1)
  z = np.exp((T4 - center) / 0.1)
  np.testing.assert_allclose(probs, z / z.sum(1, keepdims=True), rtol=1e-5)
  np.testing.assert_allclose(probs[0], [0.07508730888366699, 0.010161962360143661, 0.9147506952285767], rtol=1e-5)
  new = losses.update_center(jnp.asarray(center), jnp.mean(jnp.asarray(T4), 0, keepdims=True), 0.9)
  # 0.9 * center + 0.1 * batch mean; batch mean = (0.05, 0.0375, 0.025)
  np.testing.assert_allclose(new, [[0.05, -0.04125, 0.0025]], rtol=1e-5, atol=1e-8)


def test_dino_loss_over_crop_pairs_matches_release():
  # From the release script: S[crop, image, K] (2 global then 2 local), T[teacher crop, image, K].
  s = np.array([[[-1.1258398, -1.1523602, -0.2505786], [-0.4338788, 0.8487104, 0.6920092]],
                [[-0.3160128, -2.1152194, 0.4680964], [-0.1577124, 1.4436601, 0.2660494]],
                [[0.1664553, 0.8743818, -0.1434738], [-0.1116093, 0.9318266, 1.2590092]],
                [[2.0049806, 0.0537369, 0.6180567], [-0.4128022, -0.8410648, -2.3160419]]], np.float32)
  t = np.array([[[0.1745213, 0.5170584, 0.3084202], [0.3135947, 0.1750588, 0.5113465]],
                [[0.1611112, 0.2654502, 0.5734385], [0.2000898, 0.6894424, 0.1104679]]], np.float32)
  got = float(losses.dino_loss(jnp.asarray(s.transpose(1, 0, 2)), jnp.asarray(t.transpose(1, 0, 2)), 0.1))
  np.testing.assert_allclose(got, 8.07199478149414, rtol=1e-5)
  # By hand: pairs (global 0, teacher 1), (global 1, teacher 0), and each local with both: 6 pairs.
  log_p = s / 0.1 - np.log(np.exp(s / 0.1).sum(-1, keepdims=True))
  pairs = [(0, 1), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)]
  expected = sum(-np.mean(np.sum(t[g] * log_p[c], -1)) for c, g in pairs) / 6
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_ibot_loss_weights_each_image_by_its_masked_patches():
  sp = np.array([[[-0.5692481, 0.9199714, 1.1108161], [1.2898741, -1.478174, 2.5672328],
                  [-0.4731198, 0.3355508, -0.0033039], [-0.5344407, 1.1686878, 0.3945028]],
                 [[1.941462, 0.791498, -0.0202518], [-0.4371696, -1.5352871, -0.4126791],
                  [0.9663033, 1.6247832, -0.3656188], [-1.3024404, 0.0994035, 0.441822]]], np.float32)
  tp = np.array([[[0.1975546, 0.5589652, 0.2434803], [0.681327, 0.1978133, 0.1208597],
                  [0.4089167, 0.2331605, 0.3579228], [0.2295492, 0.1560543, 0.6143965]],
                 [[0.1758552, 0.1523499, 0.671795], [0.1442456, 0.3865612, 0.4691932],
                  [0.3167066, 0.1653457, 0.5179476], [0.1503636, 0.309193, 0.5404434]]], np.float32)
  masks = np.array([[True, False, True, True], [False, True, False, False]])
  # Gathered as the step does: masked patches first, padded to 5 slots with weight 0.
  idx = np.flatnonzero(masks.reshape(-1))
  slots = np.concatenate([idx, [0, 0]])
  weight = np.concatenate([1.0 / masks.sum(1).repeat(masks.sum(1)), [0.0, 0.0]]).astype(np.float32)
  got = float(losses.ibot_loss(jnp.asarray(sp.reshape(8, 3)[slots]), jnp.asarray(tp.reshape(8, 3)[slots]),
                               jnp.asarray(weight), num_images=2, student_temp=0.1))
  np.testing.assert_allclose(got, 5.433826446533203, rtol=1e-5)
  ce = -np.sum(tp * (sp / 0.1 - np.log(np.exp(sp / 0.1).sum(-1, keepdims=True))), -1)  # [2, 4]
  expected = (ce[0, [0, 2, 3]].mean() + ce[1, 1]) / 2  # per-image means, averaged over the 2 images
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_koleo_nearest_neighbour_distances():
  x = np.array([[-0.2596416, 0.1183371, 0.2439592, 1.1646006], [0.9984566, -0.4987148, 0.7611109, 0.6183009],
                [-0.2993845, -0.1877781, 1.9158976, 0.6901953], [-0.314035, -1.078708, 0.2408105, -1.3962272],
                [0.1135521, 1.1047257, -1.395172, 0.4751187]], np.float32)
  np.testing.assert_allclose(float(losses.koleo_loss(jnp.asarray(x))), -0.10421464592218399, rtol=1e-5)
  # By hand on unit vectors: (1,0), (0,1), (0.6,0.8): nearest neighbours 0->2, 1->2, 2->1.
  pts = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
  d02, d12 = math.sqrt(0.4 ** 2 + 0.8 ** 2), math.sqrt(0.6 ** 2 + 0.2 ** 2)
  expected = -(math.log(d02) + math.log(d12) + math.log(d12)) / 3
  np.testing.assert_allclose(float(losses.koleo_loss(jnp.asarray(pts * 3.0))), expected, rtol=1e-5)


@pytest.mark.parametrize("probs,expected", [([0.5, 0.5], math.log(2)), ([1.0, 0.0], 0.0),
                                            ([0.25] * 4, math.log(4))])
def test_entropy(probs, expected):
  np.testing.assert_allclose(float(losses.entropy(jnp.asarray(probs))), expected, atol=1e-6)
