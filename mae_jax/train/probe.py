"""A quick linear probe for the demo: multinomial logistic regression on frozen
encoder features (full batch, AdamW, standardised features).

Features (``probe.features``): ``mean`` (mean of the patch tokens after the
encoder's norm, ``[N, D]``), ``cls`` (the cls token), or ``patches`` (the patch
tokens concatenated, ``[N, L * D]``: the spatial layout kept, as small-image
probes in the literature use).

The official recipe (BatchNorm + LARS, cls token) is the ``linprobe`` task of
``train/classifier.py``;
this one is a fast yardstick to compare an MAE encoder with a random one.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


FEATURES = ("mean", "cls", "patches")


def pooled_features(model, params, images, kind: str = "mean"):
  """Encoder tokens of ``images`` on all patches (mask ratio 0, after the final norm),
  pooled as ``kind`` (``FEATURES``); traceable, so a jitted caller may shard it."""
  if kind not in FEATURES:
    from mae_jax.errors import ConfigError
    raise ConfigError(f"probe.features={kind!r} must be one of {', '.join(FEATURES)}.")
  prefix = int(getattr(model, "use_cls_token", True))
  if kind == "cls" and not prefix:
    from mae_jax.errors import ConfigError
    raise ConfigError("probe.features=cls but the model has no cls token; use mean.")
  tokens = model.apply({"params": params}, images, method=model.features)
  if kind == "mean":
    return tokens[:, prefix:].mean(axis=1)
  if kind == "cls":
    return tokens[:, 0]
  return tokens[:, prefix:].reshape(tokens.shape[0], -1)


def encoder_features(model, params, images: np.ndarray, batch_size: int = 500,
                     kind: str = "mean") -> np.ndarray:
  """``pooled_features`` of host ``images``, in batches, as a NumPy array."""
  features = jax.jit(lambda x: pooled_features(model, params, x, kind))
  out = [np.asarray(features(jnp.asarray(images[i:i + batch_size])))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit(x, y, *, num_classes: int, steps: int, lr: float, weight_decay: float):
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)

  def loss_fn(p):
    logits = x @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def body(_, carry):
    p, s = carry
    grads = jax.grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  params, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
  return params


def logistic_regression_top1(train_x, train_y, test_x, test_y, num_classes: int,
                             steps: int = 300, lr: float = 0.1,
                             weight_decay: float = 1e-4) -> float:
  mu, sigma = train_x.mean(0), train_x.std(0) + 1e-6
  standardise = lambda a: jnp.asarray((a - mu) / sigma, jnp.float32)
  p = _fit(standardise(train_x), jnp.asarray(train_y), num_classes=num_classes,
           steps=steps, lr=lr, weight_decay=weight_decay)
  pred = np.asarray(jnp.argmax(standardise(test_x) @ p["w"] + p["b"], -1))
  return float((pred == np.asarray(test_y)).mean())


def probe_top1(model, params, train, test, num_classes: int, probe_config) -> float:
  """Top-1 of a logistic-regression probe; ``train``/``test`` are (images, labels)."""
  kind = probe_config.get("features", "mean")
  fx = encoder_features(model, params, train[0], kind=kind)
  tx = encoder_features(model, params, test[0], kind=kind)
  return logistic_regression_top1(fx, train[1], tx, test[1], num_classes,
                                  steps=probe_config.steps, lr=probe_config.lr,
                                  weight_decay=probe_config.weight_decay)
