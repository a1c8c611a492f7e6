"""Model-size report: per layer, the output shape, units, weights and connections; totals; forward FLOPs.

    python -m vision.tools.summary --model lenet5 --image-size 32 --num-classes 10
    python -m vision.tools.summary --model resnet50 --json
    python -m vision.tools.summary --markdown-zoo          # the README's model-zoo table

In a notebook: `rows = layer_table("resnet18", 224)` (a list of dicts), `totals(rows)`,
`print(format_table(rows))`, `xla_flops("resnet18", 224)`, `print(zoo_table())`.

It works for every flax.linen model without per-family code. The eval-mode
forward pass is traced to a jaxpr with abstract parameters (jax.eval_shape:
nothing is computed or allocated) while a method interceptor wraps each module
call in a named scope; every equation's name stack then says which module ran
it, and the module's scope path says which parameters it owns. Sub-jaxprs
(jit, custom_jvp/vjp, remat, scan, cond) are walked too.

Conventions (counted per image; LeCun et al. 1998, Section II.B, for the first three):
- units: output activations of a layer.
- weights: trainable parameters (the 'params' collection; BatchNorm running
  statistics are buffers, not weights). The weights column sums to num_params.
- connections: conv out x (kh*kw*cin/groups); fully connected in x out (per
  token for token inputs); pooling (max, average, global average) the window
  size per output; plus one per unit for the bias of a conv or fully connected
  layer that has one, as the paper counts it (--no-count-bias-connections
  drops it). Normalisation, activations, residual adds and other elementwise
  ops have no connections. The paper's subsampling layers also had a trainable
  coefficient and bias (S2: 5 connections per unit); our pools have none.
- multiply-adds: conv and matmul (fully connected, attention) only, without
  bias, pooling or elementwise ops. FLOPs = 2 x multiply-adds. (torchvision's
  "GFLOPS" column counts one multiply-add as one FLOP: half of ours.)
- multiply-adds without padding: the same, less the kernel taps that land on
  a conv's zero padding. XLA's cost analysis (the cross-check) counts that way,
  plus every elementwise op: it is within ~2% of 2 x this for plain conv nets
  (resnet18 at 64px: 0.995) and a few % above it for nets heavy in elementwise
  work (SE, hard-swish, LayerNorm: ours / XLA is 0.94 for EfficientNet-B0 and
  ConvNeXt-T). The
  padding taps matter on small maps: resnet18 FLOPs / XLA is 1.30 at 64px, 1.08
  at 224px.

Rows: a module call that runs no other module (Conv, Dense, BatchNorm, ...) is
one row named by its parameter path (layer1_0/conv1). A pooling or matmul op run
directly by a bigger module (nn.max_pool inside ResNet) is a row of its own,
<module path>/<op>_<k>. A module with children that also owns parameters (a
class token) gets a weights-only row, "<path> (own params)"; parameters of
modules the eval pass never calls (GoogLeNet's auxiliary heads) a row
"<path> (not called)", so the weights always sum to num_params. Each row's
`kind` is conv, dense, matmul (no weights), pool, other (normalisation) or
params (weights-only rows). Only ops on data that depends on the image
count: constants (the divisor of avg_pool(count_include_pad=False)) and
parameter-only preprocessing are not per-image work. A scan body counts
`length` times (units and connections alike); a while-loop body once (its trip
count is unknown); of a cond's branches the most expensive.
"""
import argparse
import json
import math
import re
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jex

from vision.errors import UserError
from vision.models import registry
from vision.tools import require_at_least

_MARK = "summary_call"
_MARK_RE = re.compile(_MARK + r"(\d+)")
# Window pooling primitives and their row names (flax's max_pool/avg_pool lower to the first two).
_WINDOW_OPS = {"reduce_window_max": "max_pool", "reduce_window_sum": "avg_pool", "reduce_window_min": "min_pool",
               "reduce_window": "pool"}
_GLOBAL_OPS = {"reduce_sum": "global_avg_pool", "reduce_max": "global_max_pool"}
_COLUMNS = ("name", "type", "kind", "output", "units", "weights", "connections", "macs", "macs_unpadded")


def conventions(count_bias_connections: bool = True) -> list[str]:
  """The header lines that say what each column counts."""
  bias = ("+1 per unit for the bias of a conv/fc layer (LeCun et al. 1998; --no-count-bias-connections drops it)"
          if count_bias_connections else "biases not counted (--count-bias-connections adds 1 per unit)")
  return [
      "per image. units: output activations. weights: trainable params (BatchNorm running stats excluded).",
      "connections: conv out x kh*kw*cin/groups; fully connected in x out; pooling: window size per output;",
      f"  {bias};",
      "  normalisation, activations, residual adds: 0.",
      "multiply-adds: conv + matmul only (no bias, pooling, elementwise). FLOPs = 2 x multiply-adds.",
      "  (XLA's cost analysis skips kernel taps on zero padding and counts elementwise ops; both totals shown.)",
  ]


def _resolve(model, image_size, num_classes, in_channels):
  if isinstance(model, str):
    info = registry.model_info(model)
    kw = {} if num_classes is None else {"num_classes": num_classes}
    return (registry.create_model(model, **kw), image_size or info.default_image_size,
            in_channels or info.in_channels)
  if not isinstance(model, nn.Module):
    raise TypeError(f"expected a registered model name or a flax.linen Module, got {type(model).__name__}")
  if num_classes is not None:
    model = model.clone(num_classes=num_classes)
  return model, image_size or 224, in_channels or 3


def _abstract_variables(model, x):
  key = jax.random.key(0)
  variables = jax.eval_shape(lambda: model.init({"params": key, "dropout": key}, jnp.zeros(x.shape, x.dtype),
                                                train=False))
  return {k: v for k, v in variables.items() if k != "intermediates"}


def _trace(model, variables, x):
  """Jaxpr of the eval forward pass plus one record per module call (path, class, output shapes)."""
  calls, stack = [], []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "setup":
      return next_fun(*args, **kwargs)
    scope = context.module.scope
    path = tuple(scope.path) if scope is not None else ()
    call = {"path": path, "type": type(context.module).__name__,
            # A method calling another method of the same module is not a second layer.
            "nested": bool(stack) and calls[stack[-1]]["path"] == path}
    calls.append(call)
    stack.append(len(calls) - 1)
    try:
      with jax.named_scope(f"{_MARK}{len(calls) - 1}"):
        out = next_fun(*args, **kwargs)
    finally:
      stack.pop()
    call["out"] = [tuple(leaf.shape) for leaf in jax.tree.leaves(out) if hasattr(leaf, "shape")]
    return out

  with nn.intercept_methods(interceptor):
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return closed.jaxpr, calls


def _count(eqn):
  """Multiply-adds or pooling connections of one equation (whole batch), or None if it has none."""
  name = eqn.primitive.name
  out = tuple(eqn.outvars[0].aval.shape)
  size = math.prod(out)
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    # The kernel's in-feature dim is already cin/groups, so this is out x kh*kw*cin/groups.
    per_output = math.prod(rhs) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return {"op": "conv", "shape": out, "macs": size * per_output, "unpadded": _conv_unpadded_macs(eqn),
            "pool": 0}
  if name == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    k = math.prod(eqn.invars[0].aval.shape[d] for d in contract)
    return {"op": "matmul", "shape": out, "macs": size * k, "unpadded": size * k, "pool": 0}
  if name in _WINDOW_OPS:
    window = tuple(eqn.params["window_dimensions"])
    spatial = len(window) == 4 and window[0] == window[3] == 1
    return {"op": _WINDOW_OPS[name] if spatial else name, "shape": out, "macs": 0, "unpadded": 0,
            "pool": size * math.prod(window)}
  if name in _GLOBAL_OPS:
    shape_in = eqn.invars[0].aval.shape
    axes = tuple(eqn.params["axes"])
    # Only spatial (NHWC) or token (NLC) pooling; channel reductions belong to normalisation.
    if (len(shape_in) == 4 and axes == (1, 2)) or (len(shape_in) == 3 and axes == (1,)):
      return {"op": _GLOBAL_OPS[name], "shape": out, "macs": 0, "unpadded": 0, "pool": math.prod(shape_in)}
  return None


def _conv_unpadded_macs(eqn):
  """Multiply-adds without the kernel taps that land on zero padding (what XLA's cost analysis counts)."""
  p, dn = eqn.params, eqn.params["dimension_numbers"]
  lhs, rhs, out = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
  n = out[dn.out_spec[0]] * out[dn.out_spec[1]] * rhs[dn.rhs_spec[1]]
  for i in range(len(dn.lhs_spec) - 2):
    size, k, o = lhs[dn.lhs_spec[2 + i]], rhs[dn.rhs_spec[2 + i]], out[dn.out_spec[2 + i]]
    lo, stride = p["padding"][i][0], p["window_strides"][i]
    rd, ld = p["rhs_dilation"][i], p["lhs_dilation"][i]
    dilated = (size - 1) * ld + 1
    n *= sum(1 for a in range(o) for t in range(k)
             if 0 <= a * stride - lo + t * rd < dilated and (a * stride - lo + t * rd) % ld == 0)
  return n


def _walk(jaxpr, dep, mark, mult, events, first_seen, clock):
  """Appends counted events of `jaxpr` (ops on image-dependent data) with the call mark that ran them."""
  for eqn in jaxpr.eqns:
    marks = _MARK_RE.findall(str(eqn.source_info.name_stack))
    eqn_mark = int(marks[-1]) if marks else mark
    clock[0] += 1
    first_seen.setdefault(eqn_mark, (clock[0], mult))
    invars = [v for v in eqn.invars if not isinstance(v, jex.Literal)]
    is_dep = any(v in dep for v in invars)
    subs = list(jex.jaxprs_in_params(eqn.params))
    if subs:
      prim = eqn.primitive.name
      positional = prim not in ("scan", "while", "cond")
      inner_mult = mult * eqn.params["length"] if prim == "scan" else mult
      branches = []
      for sub in subs:
        if positional and len(sub.invars) == len(eqn.invars):
          dep.update(s for s, o in zip(sub.invars, eqn.invars) if not isinstance(o, jex.Literal) and o in dep)
        elif is_dep:  # loops feed outputs back into inputs: all or nothing
          dep.update(sub.invars)
        branch = []
        _walk(sub, dep, eqn_mark, inner_mult, branch, first_seen, clock)
        branches.append(branch)
      if prim == "cond":
        branches = [max(branches, key=lambda b: sum(e["macs"] + e["pool"] for e in b))]
      for branch in branches:
        events.extend(branch)
    elif is_dep:
      event = _count(eqn)
      if event:
        event.update(mark=eqn_mark, mult=mult, clock=clock[0])
        events.append(event)
    if is_dep:
      dep.update(eqn.outvars)


def _per_image(shape, batch):
  return shape[1:] if shape and shape[0] == batch else shape


def _rows(calls, events, first_seen, params, batch, count_bias_connections):
  paths = {c["path"] for c in calls}
  inner = {p[:i] for p in paths for i in range(len(p))}  # paths that have a called child
  type_of, start = {}, {}
  for i, call in enumerate(calls):
    type_of.setdefault(call["path"], call["type"])
    start[call["path"]] = min(start.get(call["path"], math.inf), first_seen.get(i, (math.inf,))[0])
  rows = {}

  def row(name, **init):
    if name not in rows:
      rows[name] = {"name": name, "type": "", "kind": "other", "output": (), "units": 0, "weights": 0,
                    "connections": 0, "macs": 0, "macs_unpadded": 0, "order": math.inf, "ops": set(),
                    "bias": False, **init}
    return rows[name]

  def label(path):
    return "/".join(path) if path else "(root)"

  for i, call in enumerate(calls):
    # A call with no equation in the jaxpr was a discarded trace (nn.scan traces its body twice).
    if call["path"] in inner or call["nested"] or i not in first_seen:
      continue
    r = row(label(call["path"]), type=call["type"], order=start[call["path"]])
    for shape in call["out"]:
      per_image = math.prod(shape) // batch if shape and shape[0] == batch else math.prod(shape)
      r["units"] += per_image * first_seen[i][1]
    if not r["output"] and call["out"]:
      r["output"] = _per_image(call["out"][0], batch)

  counters = {}
  for e in events:
    path = calls[e["mark"]]["path"] if e["mark"] is not None else ()
    if path in inner:  # op run directly by a module that has children: a row of its own
      k = counters[(path, e["op"])] = counters.get((path, e["op"]), -1) + 1
      r = row("/".join(path + (f"{e['op']}_{k}",)), type=e["op"], output=_per_image(e["shape"], batch),
              order=e["clock"])
      r["units"] = math.prod(r["output"])
    else:
      r = rows[label(path)]
    r["macs"] += e["macs"] * e["mult"] // batch
    r["macs_unpadded"] += e["unpadded"] * e["mult"] // batch
    r["connections"] += (e["macs"] + e["pool"]) * e["mult"] // batch
    r["ops"].add(e["op"])

  # Each parameter belongs to the innermost called module whose path prefixes it.
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    key = tuple(getattr(k, "key", str(k)) for k in keypath)
    owner = next((key[:i] for i in range(len(key) - 1, -1, -1) if key[:i] in paths), ())
    direct = len(key) - 1 == len(owner)
    if owner in paths and owner not in inner:
      r = row(label(owner), type=type_of[owner], order=start[owner])
    elif direct:  # e.g. a class token owned by the whole model
      r = row((label(owner) + " " if owner else "") + "(own params)", type=type_of.get(owner, ""), kind="params",
              order=start.get(owner, math.inf))
    else:  # e.g. GoogLeNet's auxiliary heads, only run in training
      r = row(label(key[:len(owner) + 1]) + " (not called)", type="unused", kind="params")
    r["weights"] += math.prod(leaf.shape)
    r["bias"] |= direct and key[-1] == "bias"

  out = []
  for r in sorted(rows.values(), key=lambda r: r["order"]):
    if not (r["weights"] or r["ops"]):
      continue  # dropout, activation modules, ...
    if r["kind"] != "params":
      if count_bias_connections and r["bias"] and r["ops"] & {"conv", "matmul"}:
        r["connections"] += r["units"]
      r["kind"] = ("conv" if "conv" in r["ops"] else
                   ("dense" if r["weights"] else "matmul") if "matmul" in r["ops"] else
                   "pool" if r["ops"] else "other")
    out.append({k: r[k] for k in _COLUMNS})
  return out


def layer_table(model, image_size: int | None = None, *, num_classes: int | None = None, batch: int = 1,
                in_channels: int | None = None, count_bias_connections: bool = True) -> list[dict]:
  """Per-layer rows (dicts: name, type, kind, output, units, weights, connections, macs, macs_unpadded), per image.

  `model` is a registered name (default resolution and channels from the
  registry) or a flax.linen Module (224x224x3 unless given). `kind` is conv,
  dense, matmul, pool, other (normalisation...) or params (weights-only rows).
  """
  model, size, cin = _resolve(model, image_size, num_classes, in_channels)
  x = jax.ShapeDtypeStruct((batch, size, size, cin), jnp.float32)
  variables = _abstract_variables(model, x)
  jaxpr, calls = _trace(model, variables, x)
  events, first_seen = [], {}
  _walk(jaxpr, set(jaxpr.invars[-1:]), None, 1, events, first_seen, [0])
  return _rows(calls, events, first_seen, variables.get("params", {}), batch, count_bias_connections)


def totals(rows: list[dict]) -> dict:
  """Column sums, plus flops = 2 x multiply-adds (per image)."""
  t = {k: sum(r[k] for r in rows) for k in ("units", "weights", "connections", "macs", "macs_unpadded")}
  t["flops"] = 2 * t["macs"]
  return t


def xla_flops(model, image_size: int | None = None, *, num_classes: int | None = None, batch: int = 1,
              in_channels: int | None = None) -> float:
  """Forward FLOPs per image by XLA's cost analysis of the compiled eval apply (counts elementwise ops too)."""
  model, size, cin = _resolve(model, image_size, num_classes, in_channels)
  x = jax.ShapeDtypeStruct((batch, size, size, cin), jnp.float32)
  variables = _abstract_variables(model, x)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device program
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan"))) / batch


def format_table(rows: list[dict], *, title: str = "", count_bias_connections: bool = True,
                 xla_flops_per_image: float | None = None) -> str:
  """The printed report: conventions header, one line per row, totals, FLOPs (and XLA's count)."""
  cols = ("layer", "type", "output", "units", "weights", "connections", "mult-adds")
  body = [(r["name"], r["type"], "x".join(map(str, r["output"])), f"{r['units']:,}", f"{r['weights']:,}",
           f"{r['connections']:,}", f"{r['macs']:,}") for r in rows]
  t = totals(rows)
  body.append(("total", "", "", f"{t['units']:,}", f"{t['weights']:,}", f"{t['connections']:,}", f"{t['macs']:,}"))
  widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
  fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
  lines = ([title] if title else []) + conventions(count_bias_connections) + ["", fmt(cols)]
  lines += [fmt(b) for b in body[:-1]] + ["-" * len(fmt(cols)), fmt(body[-1]), ""]
  lines.append(f"forward FLOPs (2 x multiply-adds): {t['flops']:,} = {t['flops'] / 1e9:.4g} GFLOPs per image")
  unpadded = 2 * t["macs_unpadded"]
  lines.append(f"  without kernel taps on zero padding: {unpadded:,} = {unpadded / 1e9:.4g} GFLOPs per image")
  if xla_flops_per_image is not None:
    xla = xla_flops_per_image or float("nan")
    lines.append(f"XLA cost analysis (skips padding taps, counts elementwise ops): {xla:,.0f} = {xla / 1e9:.4g} "
                 f"GFLOPs per image; ours / XLA = {t['flops'] / xla:.3f}, without padding taps {unpadded / xla:.3f}")
  return "\n".join(lines)


def zoo_rows(pattern: str = "*", num_classes: int = 1000) -> list[dict]:
  """Per registered model (aliases folded into their model's row): params at `num_classes`, GFLOPs (2 x
  multiply-adds) at the default size, seconds taken."""
  names = registry.list_models(pattern)
  aliases = {}
  for name in registry.list_models():
    target = registry.model_info(name).extra.get("alias_of")
    if target:
      aliases.setdefault(target, []).append(name)
  out = []
  for name in names:
    if registry.model_info(name).extra.get("alias_of"):
      continue
    start = time.perf_counter()
    t = totals(layer_table(name, num_classes=num_classes))
    out.append({"model": name, "params": t["weights"], "gflops": t["flops"] / 1e9,
                "image_size": registry.model_info(name).default_image_size, "aliases": aliases.get(name, []),
                "seconds": time.perf_counter() - start})
  return out


def _gflops(g):
  return f"{g:,.0f}" if g >= 100 else f"{g:#.3g}"


def zoo_table(pattern: str = "*", rows: list[dict] | None = None) -> str:
  """The README's model-zoo table in Markdown."""
  rows = zoo_rows(pattern) if rows is None else rows
  lines = ["| model | params (1000 classes) | GFLOPs (2 x mult-adds) | resolution | also registered as |",
           "|---|---:|---:|---:|---|"]
  lines += [f"| {r['model']} | {r['params']:,} | {_gflops(r['gflops'])} | {r['image_size']} | "
            f"{', '.join(r.get('aliases', []))} |" for r in rows]
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m vision.tools.summary", description=__doc__.splitlines()[0])
  p.add_argument("--model", help="registered model name (see vision.models.list_models())")
  p.add_argument("--image-size", type=int, help="input height = width (default: the model's)")
  p.add_argument("--num-classes", type=int, help="head size (default: the model's)")
  p.add_argument("--in-channels", type=int, help="input channels (default: the model's)")
  p.add_argument("--batch", type=int, default=1, help="traced batch; numbers are per image")
  p.add_argument("--count-bias-connections", action=argparse.BooleanOptionalAction, default=True,
                 help="count a conv/fc bias as one connection per unit (LeCun et al. 1998)")
  p.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                 help="cross-check FLOPs with XLA's cost analysis (compiles the model)")
  p.add_argument("--json", action="store_true", help="print rows, totals and conventions as JSON")
  p.add_argument("--markdown-zoo", action="store_true", help="print the model-zoo table of every registered model")
  p.add_argument("--pattern", default="*", help="with --markdown-zoo: which models (shell pattern)")
  args = p.parse_args(argv)
  require_at_least(p, args, image_size=1, num_classes=1, in_channels=1, batch=1)
  try:
    if args.markdown_zoo:
      start = time.perf_counter()
      rows = zoo_rows(args.pattern)
      print(zoo_table(rows=rows))
      slow = sorted(rows, key=lambda r: -r["seconds"])[:5]
      print(f"{len(rows)} models in {time.perf_counter() - start:.1f} s; slowest: "
            + ", ".join(f"{r['model']} {r['seconds']:.1f} s" for r in slow), file=sys.stderr)
      return
    if not args.model:
      p.error("pass --model NAME or --markdown-zoo")
    kw = dict(num_classes=args.num_classes, batch=args.batch, in_channels=args.in_channels)
    rows = layer_table(args.model, args.image_size, count_bias_connections=args.count_bias_connections, **kw)
    xla = xla_flops(args.model, args.image_size, **kw) if args.xla else None
    info = registry.model_info(args.model)
    size, cin = args.image_size or info.default_image_size, args.in_channels or info.in_channels
    num_classes = args.num_classes if args.num_classes is not None else getattr(
        registry.create_model(args.model), "num_classes", None)
    title = f"{args.model} at {size}x{size}x{cin}, num_classes={num_classes}, traced batch {args.batch}"
    if args.json:
      t = totals(rows)
      print(json.dumps({"model": args.model, "image_size": size, "in_channels": cin, "num_classes": num_classes,
                        "batch": args.batch, "conventions": conventions(args.count_bias_connections),
                        "rows": rows, "totals": t, "xla_flops": xla,
                        "flops_over_xla": t["flops"] / xla if xla else None}, indent=1))
    else:
      print(format_table(rows, title=title, count_bias_connections=args.count_bias_connections,
                         xla_flops_per_image=xla))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
